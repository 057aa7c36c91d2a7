//! Passwords out of URLs, before they reach a log line.

/// The URL with any password replaced by `***` (also in comma-separated lists).
pub fn redact(urls: &str) -> String {
    urls.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    // A lone token (`nats://token@host`) is a secret too.
    let hidden = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
    let path = path.map(|p| format!("/{p}")).unwrap_or_default();
    format!("{scheme}://{hidden}@{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("rediss://app:s3cret@redis:6380/0", "rediss://app:***@redis:6380/0"),
            ("rediss://:s3cret@redis:6380", "rediss://:***@redis:6380"),
            ("nats://tok3n@nats:4222", "nats://***@nats:4222"),
            ("tls://a:b@n1:4222,tls://a:b@n2:4222", "tls://a:***@n1:4222,tls://a:***@n2:4222"),
            ("http://pb:8090/x", "http://pb:8090/x"),
            ("not a url", "not a url"),
            ("nats://u:p@ss@host", "nats://u:***@host"),
        ];
        for (raw, want) in cases {
            assert_eq!(redact(raw), want, "{raw}");
        }
    }
}
