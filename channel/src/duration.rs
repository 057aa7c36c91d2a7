//! Durations as people write them in flags and RelayChannel specs: `250ms`, `15s`, `5m`, `24h`, or
//! a bare number of seconds. Overflow is an error, never a wrap or a panic.

use std::time::Duration;

/// Parses `250ms`, `15s`, `5m`, `24h` or a bare number of seconds.
pub fn parse(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let bad = || format!("{raw:?} is not a duration like 250ms, 15s, 5m or 24h");
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or_else(|| format!("{raw:?} is too long"));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(format!("{raw:?}: unknown unit {unit:?}; use ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        for bad in ["5d", "s", "", "-1s", "1.5s", "99999999999999999999h", "6000000000000000000h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
