//! Channel ids: tokens of `[A-Za-z0-9_-]` joined by `.`, at most 255 bytes.
//!
//! The grammar exists so that a client can never name a NATS wildcard (`*`, `>`) or an empty token
//! and thereby subscribe to channels it was not granted.

use std::fmt;

/// The longest channel id, in bytes.
pub const MAX_LEN: usize = 255;

/// A channel id that passed [`ChannelId::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(String);

/// Why a channel id was refused; the text is shown to clients as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChannelId {
    #[error("channel id is empty")]
    Empty,
    #[error("channel id is {0} bytes long; the limit is {MAX_LEN}")]
    TooLong(usize),
    #[error("channel id has an empty token (leading, trailing or doubled '.')")]
    EmptyToken,
    #[error("channel id has {0:?}; allowed are letters, digits, '_' and '-' in tokens joined by '.'")]
    BadChar(char),
}

impl ChannelId {
    /// Checks `raw` against the grammar.
    pub fn parse(raw: &str) -> Result<Self, InvalidChannelId> {
        if raw.is_empty() {
            return Err(InvalidChannelId::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(InvalidChannelId::TooLong(raw.len()));
        }
        for token in raw.split('.') {
            if token.is_empty() {
                return Err(InvalidChannelId::EmptyToken);
            }
            if let Some(c) = token.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
                return Err(InvalidChannelId::BadChar(c));
            }
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last token: for `inbox.bob` it is `bob` (the owner in the `owner` access rule).
    pub fn last_token(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or(&self.0)
    }

    /// This id and its ancestors, longest first: `a.b.c`, `a.b`, `a`.
    /// The first one that a `RelayChannel` declares governs the channel.
    pub fn governing_candidates(&self) -> impl Iterator<Item = &str> {
        let s = self.0.as_str();
        std::iter::once(s).chain(s.char_indices().rev().filter(|(_, c)| *c == '.').map(move |(i, _)| &s[..i]))
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in ["chat", "chat.room-1", "inbox.user_42", "a.b.c.d", "A-Z_09"] {
            assert_eq!(ChannelId::parse(ok).unwrap().as_str(), ok);
        }
        assert!(ChannelId::parse(&"a".repeat(MAX_LEN)).is_ok());
    }

    #[test]
    fn refuses_what_could_widen_a_subscription() {
        let cases: &[(&str, InvalidChannelId)] = &[
            ("", InvalidChannelId::Empty),
            ("chat.*", InvalidChannelId::BadChar('*')),
            ("chat.>", InvalidChannelId::BadChar('>')),
            (">", InvalidChannelId::BadChar('>')),
            ("chat room", InvalidChannelId::BadChar(' ')),
            ("chat..room", InvalidChannelId::EmptyToken),
            (".chat", InvalidChannelId::EmptyToken),
            ("chat.", InvalidChannelId::EmptyToken),
            ("chät", InvalidChannelId::BadChar('ä')),
            ("a\tb", InvalidChannelId::BadChar('\t')),
        ];
        for (raw, want) in cases {
            assert_eq!(ChannelId::parse(raw).unwrap_err(), *want, "{raw:?}");
        }
        assert_eq!(ChannelId::parse(&"a".repeat(MAX_LEN + 1)).unwrap_err(), InvalidChannelId::TooLong(256));
    }

    #[test]
    fn governing_candidates_go_from_longest_to_shortest() {
        let id = ChannelId::parse("chat.eu.room1").unwrap();
        assert_eq!(id.governing_candidates().collect::<Vec<_>>(), ["chat.eu.room1", "chat.eu", "chat"]);
        assert_eq!(id.last_token(), "room1");
        let id = ChannelId::parse("solo").unwrap();
        assert_eq!(id.governing_candidates().collect::<Vec<_>>(), ["solo"]);
    }
}
