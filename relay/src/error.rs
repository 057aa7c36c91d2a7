//! The relay's errors, and the one gRPC status each maps to at the edge.
//!
//! What a client reads names the failing part ("message bus unavailable"), never an address or a
//! backend's own error text: those go to the log (at most once a second per part, with a count of
//! what was not logged), where an operator can read them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// Everything that can go wrong while serving a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// The channel is not set up for this call (e.g. presence is off): asking again will not help.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (PocketBase, Redis, NATS) failed or is down: the client should retry.
    #[error("{what}: {source}")]
    Unavailable { what: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    /// Try again, for a reason the relay words itself (safe to show).
    #[error("{0}")]
    Retry(String),
    /// The server is shutting down: reconnect to another replica.
    #[error("relay is shutting down; reconnect")]
    ShuttingDown,
}

/// A client's value as an error message may quote it: its first 64 characters, quoted, with `...`
/// when it was longer (a status travels in a header; a megabyte id must not come back whole).
pub fn quote(raw: &str) -> String {
    const SHOWN: usize = 64;
    match raw.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...", &raw[..cut]),
        None => format!("{raw:?}"),
    }
}

impl Error {
    pub fn unavailable(what: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Unavailable { what, source: source.into() }
    }
}

impl Error {
    /// A copy of an error shared by several callers (a single-flight lookup's).
    pub fn to_owned_error(&self) -> Self {
        match self {
            Error::Unauthenticated(m) => Error::Unauthenticated(m.clone()),
            Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::NotFound(m) => Error::NotFound(m.clone()),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(m.clone()),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(m.clone()),
            Error::Unavailable { what, source } => Error::unavailable(what, source.to_string()),
            Error::Retry(m) => Error::Retry(m.clone()),
            Error::ShuttingDown => Error::ShuttingDown,
        }
    }

    /// The error a status stands for (for calls answered by another replica).
    pub fn from_status(code: Code, message: String) -> Self {
        match code {
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::NotFound => Error::NotFound(message),
            Code::ResourceExhausted => Error::ResourceExhausted(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            _ => Error::Retry(message),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::unavailable("redis", e)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable { .. } | Error::Retry(_) | Error::ShuttingDown => Code::Unavailable,
        };
        let message = match &e {
            Error::Unavailable { what, source } => {
                log_unavailable(what, source.as_ref());
                crate::metrics::backend_error(part(what));
                format!("{} unavailable; retry", part(what))
            }
            other => other.to_string(),
        };
        Status::new(code, message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The name a client reads for an internal part.
fn part(what: &str) -> &'static str {
    if what.starts_with("redis") || what.starts_with("channel settings") {
        "history store"
    } else if what.starts_with("nats") || what.starts_with("jetstream") || what.starts_with("queue") || what == "hub" {
        "message bus"
    } else if what.starts_with("authentication") || what.starts_with("pocketbase") {
        "authentication service"
    } else {
        "relay"
    }
}

/// Logs a backend failure, at most once a second per part.
fn log_unavailable(what: &'static str, source: &(dyn std::error::Error + Send + Sync)) {
    static LAST: Mutex<Option<HashMap<&'static str, (Instant, u64)>>> = Mutex::new(None);
    let mut last = LAST.lock().expect("log throttle lock");
    let (at, suppressed) =
        last.get_or_insert_with(HashMap::new).entry(what).or_insert((Instant::now() - Duration::from_secs(2), 0));
    if at.elapsed() >= Duration::from_secs(1) {
        tracing::warn!(part = what, error = %source, suppressed = *suppressed, "backend unavailable");
        *at = Instant::now();
        *suppressed = 0;
    } else {
        *suppressed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_client_values_are_clipped() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "é".repeat(10_000);
        let q = quote(&long);
        assert!(q.len() < 200 && q.ends_with("...") && q.starts_with("\"éé"), "{q}");
    }

    #[test]
    fn clients_read_the_part_not_the_backend_detail() {
        let s = Status::from(Error::unavailable("authentication service", "calling http://10.0.0.5:8090/api: refused"));
        assert_eq!((s.code(), s.message()), (Code::Unavailable, "authentication service unavailable; retry"));
        let s = Status::from(Error::unavailable("redis", "Connection refused (os error 111) at 10.1.2.3:6379"));
        assert_eq!(s.message(), "history store unavailable; retry");
        assert_eq!(Status::from(Error::unavailable("jetstream ack", "x")).message(), "message bus unavailable; retry");
        assert_eq!(Status::from(Error::Retry("stored as seq 3".into())).message(), "stored as seq 3");
    }
}
