//! Saturation: the highest offered rate a system takes with everything delivered, no errors, the
//! offered rate actually published, and p99 publish-to-delivery within [`P99_BOUND_MS`]. Found with
//! short open-loop trials: doubling from the starting rate until a trial fails, then bisecting.

use std::time::Duration;

use crate::scenario::{Load, Pids, open_loop};
use crate::stats::Report;
use crate::targets::Shared;

/// The latency bound a trial must keep (publish to delivery, p99).
pub const P99_BOUND_MS: f64 = 50.0;
/// Bisection steps after the doubling found a failing rate.
const BISECT: usize = 3;
/// The highest rate tried.
const MAX_RATE: f64 = 2_000_000.0;

/// Why a trial at `rate` failed, or None when it passed.
fn failure(r: &Report, rate: f64, duration: Duration) -> Option<String> {
    let offered = rate * duration.as_secs_f64();
    if r.errors > 0 {
        Some(format!("{} errors", r.errors))
    } else if (r.published as f64) < 0.97 * offered {
        Some(format!("published {:.0}/s of {rate:.0}/s offered", r.publish_per_s))
    } else if r.delivered < r.expected {
        Some(format!("{} of {} delivered", r.delivered, r.expected))
    } else if r.latency.p99_ms > P99_BOUND_MS {
        Some(format!("p99 {:.0} ms", r.latency.p99_ms))
    } else {
        None
    }
}

/// Searches from `start` msg/s; reports the best passing trial (its figures), with every trial in
/// the note. When even the first rate fails, reports that trial.
pub async fn search(t: Shared, pids: &Pids, name: &str, base: Load) -> anyhow::Result<Report> {
    let trial = |rate: f64| Load { rate, ..base };
    let mut trials = Vec::new();
    let mut best: Option<(f64, Report)> = None;
    let mut failed: Option<(f64, Report)> = None;
    let mut rate = base.rate;
    while failed.is_none() && rate <= MAX_RATE {
        let r = open_loop(t.clone(), pids, name, trial(rate)).await?;
        record(&mut trials, &mut best, &mut failed, rate, r, base.duration);
        rate *= 2.0;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for _ in 0..BISECT {
        let (Some((lo, _)), Some((hi, _))) = (&best, &failed) else { break };
        let mid = ((lo + hi) / 2.0).round();
        let r = open_loop(t.clone(), pids, name, trial(mid)).await?;
        record(&mut trials, &mut best, &mut failed, mid, r, base.duration);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (mut report, verdict) = match (best, failed) {
        (Some((rate, r)), _) => (r, format!("saturation {rate:.0} msg/s offered")),
        (None, Some((_, r))) => (r, "saturation: no rate passed".to_owned()),
        (None, None) => anyhow::bail!("no trial ran"),
    };
    report.scenario = format!("{name} (saturation)");
    report.note = format!(
        "{verdict} (all delivered, p99 <= {P99_BOUND_MS} ms); trials: {}{}",
        trials.join(", "),
        if report.note.is_empty() { String::new() } else { format!("; {}", report.note) }
    );
    Ok(report)
}

fn record(
    trials: &mut Vec<String>,
    best: &mut Option<(f64, Report)>,
    failed: &mut Option<(f64, Report)>,
    rate: f64,
    r: Report,
    duration: Duration,
) {
    match failure(&r, rate, duration) {
        None => {
            trials.push(format!("{rate:.0} ok"));
            if best.as_ref().is_none_or(|(b, _)| rate > *b) {
                *best = Some((rate, r));
            }
        }
        Some(why) => {
            trials.push(format!("{rate:.0} failed ({why})"));
            if failed.as_ref().is_none_or(|(f, _)| rate < *f) {
                *failed = Some((rate, r));
            }
        }
    }
}
