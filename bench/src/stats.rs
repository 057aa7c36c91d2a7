//! Figures: latency histograms, counters, and CPU and memory of server processes read from /proc.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Nanoseconds since the Unix epoch: both ends of a measurement run on this machine's clock.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, 60_000_000));
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub count: u64,
}

impl From<&Histogram<u64>> for Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
            count: h.len(),
        }
    }
}

/// CPU time and memory of a set of server processes.
pub struct ProcSampler {
    pids: Vec<u32>,
    start_cpu: f64,
    start: Instant,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct ProcFigures {
    /// CPU used over the measured window, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
    pub rss_mb: f64,
}

impl ProcSampler {
    pub fn start(pids: Vec<u32>) -> Self {
        let start_cpu = pids.iter().map(|p| cpu_seconds(*p)).sum();
        Self { pids, start_cpu, start: Instant::now() }
    }

    pub fn finish(&self) -> ProcFigures {
        let cpu: f64 = self.pids.iter().map(|p| cpu_seconds(*p)).sum();
        let rss: u64 = self.pids.iter().map(|p| rss_bytes(*p)).sum();
        ProcFigures {
            cpu_cores: (cpu - self.start_cpu) / self.start.elapsed().as_secs_f64(),
            rss_mb: rss as f64 / (1 << 20) as f64,
        }
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat; here 0-based after the name: 11, 12.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; getconf would need a process per sample.
    100.0
}

/// Resident set size of a process.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// One scenario's result for one system.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Report {
    pub system: String,
    pub scenario: String,
    pub params: String,
    pub seconds: f64,
    pub published: u64,
    pub publish_per_s: f64,
    pub delivered: u64,
    pub expected: u64,
    pub delivered_per_s: f64,
    pub errors: u64,
    /// Publish to delivery.
    pub latency: Percentiles,
    /// Publish call until acknowledged.
    pub ack: Percentiles,
    /// The system's server processes (for the relay: relays, NATS and Redis).
    pub server: ProcFigures,
    /// Only the front processes (relays, or Centrifugo, or nats-server).
    pub front: ProcFigures,
    /// For the idle scenario: resident memory added per idle subscription, in KiB.
    pub kib_per_idle_subscription: Option<f64>,
    /// Free-form notes (what does not apply, how the peer was set up).
    pub note: String,
    /// Where the servers and the load generator ran (`--pin`).
    pub pinning: String,
    /// The channels had a JetStream stream, as the operator declares them (`--declared`).
    pub declared: bool,
    /// Server CPU (every server process of the system) per 1,000 acknowledged publishes, in ms.
    pub server_cpu_ms_per_1k: f64,
    /// The presence scenario's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<crate::presence::PresenceFigures>,
}
