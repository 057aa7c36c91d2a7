//! A seeded request fuzzer for a running relay: random and mutated calls over gRPC (every RPC, with
//! hostile tokens, channel ids, texts, cursors, epochs, stream ids) and raw gRPC-web over HTTP/1.1
//! (valid frames with mutated bytes, lying length prefixes, truncated and random bodies, odd
//! paths). It records every answer; [`Report::problems`] says what must never happen: an answer
//! that is not a proper status, a panic in the relay's log, a relay that is no longer ready, memory
//! or file descriptors that do not come back.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::proto::{self, Cursor, cursor::Position};
use tonic::Code;

use crate::{Client, RelayProc, TestUser};

/// What a fuzz run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub requests: u64,
    /// gRPC status codes (and "ok") by count.
    pub statuses: BTreeMap<String, u64>,
    /// gRPC-web: HTTP status and grpc-status by count.
    pub web: BTreeMap<String, u64>,
    /// Answers that are not proper statuses.
    pub improper: Vec<String>,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub fds_before: usize,
    pub fds_after: usize,
    pub panics: usize,
    pub ready_after: bool,
}

impl Report {
    /// Everything that must not happen.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self.improper.iter().take(5).cloned().collect();
        if self.panics > 0 {
            out.push(format!("{} panics in the relay's log", self.panics));
        }
        if !self.ready_after {
            out.push("the relay is not ready after the run".into());
        }
        if self.rss_after_kb > self.rss_before_kb + 128 * 1024 {
            out.push(format!("memory {} kB -> {} kB", self.rss_before_kb, self.rss_after_kb));
        }
        if self.fds_after > self.fds_before + 64 {
            out.push(format!("file descriptors {} -> {}", self.fds_before, self.fds_after));
        }
        out
    }

    pub fn summary(&self) -> String {
        format!(
            "{} requests; gRPC {:?}; gRPC-web {:?}; memory {} -> {} kB; fds {} -> {}; panics {}; problems {:?}",
            self.requests,
            self.statuses,
            self.web,
            self.rss_before_kb,
            self.rss_after_kb,
            self.fds_before,
            self.fds_after,
            self.panics,
            self.problems()
        )
    }
}

/// Codes a relay may answer with; anything else (UNKNOWN above all) is a bug.
fn proper(code: Code, message: &str) -> bool {
    match code {
        Code::Ok
        | Code::InvalidArgument
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::NotFound
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled => true,
        // tonic answers a body it cannot decode with INTERNAL; nothing else may.
        Code::Internal => message.contains("decode"),
        // Headers over HTTP/2's limit (16 KiB) are refused by the HTTP layer itself, before any
        // work: 431, which gRPC clients report as UNKNOWN.
        Code::Unknown => message.contains("HTTP status code 431"),
        _ => false,
    }
}

/// Resident memory (kB) and open file descriptors of a process.
pub fn usage(pid: u32) -> (u64, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    (rss, fds)
}

/// Fuzzes `relay` for `duration` with `workers` concurrent callers; `users` give valid tokens.
pub async fn run(relay: &RelayProc, users: &[TestUser], seed: u64, duration: Duration, workers: usize) -> Report {
    let client = Client::connect(&relay.addr()).await;
    // Warm up (connections, caches) before the baseline.
    let _ = client.clone().history(&users[0].token, "warmup", None, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_before_kb, fds_before) = usage(relay.pid());
    let deadline = tokio::time::Instant::now() + duration;
    let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
    let tasks = (0..workers).map(|w| {
        let (client, tokens, addr) = (client.clone(), tokens.clone(), relay.addr());
        tokio::spawn(worker(client, addr, tokens, seed.wrapping_mul(1_000_003).wrapping_add(w as u64), deadline))
    });
    let mut report = Report { rss_before_kb, fds_before, ..Default::default() };
    for t in futures::future::join_all(tasks).await {
        let part = t.expect("fuzz worker");
        report.requests += part.requests;
        for (k, v) in part.statuses {
            *report.statuses.entry(k).or_default() += v;
        }
        for (k, v) in part.web {
            *report.web.entry(k).or_default() += v;
        }
        report.improper.extend(part.improper);
    }
    // Let abandoned work finish and caches expire what they should.
    tokio::time::sleep(Duration::from_secs(3)).await;
    (report.rss_after_kb, report.fds_after) = usage(relay.pid());
    report.panics = relay.log().matches("panicked").count();
    report.ready_after = relay.ready().await;
    report
}

async fn worker(
    client: Client,
    addr: String,
    tokens: Vec<String>,
    seed: u64,
    deadline: tokio::time::Instant,
) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::new();
    let mut report = Report::default();
    while tokio::time::Instant::now() < deadline {
        report.requests += 1;
        if rng.random_bool(0.25) {
            let key = grpc_web(&http, &addr, &mut rng).await;
            // A server error, or a gRPC UNKNOWN, is a bug; 4xx refusals and proper statuses are not.
            if key.starts_with('5') || key == "200/2" {
                report.improper.push(format!("gRPC-web: {key}"));
            }
            *report.web.entry(key).or_default() += 1;
            continue;
        }
        let (what, outcome) = grpc(&client, &tokens, &mut rng).await;
        let key = match &outcome {
            Ok(()) => "ok".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        if let Err(s) = &outcome
            && !proper(s.code(), s.message())
        {
            report.improper.push(format!("{what}: {:?} {:?}", s.code(), s.message()));
        }
        *report.statuses.entry(key).or_default() += 1;
    }
    report
}

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn token(rng: &mut StdRng, tokens: &[String]) -> String {
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
    match rng.random_range(0..8) {
        0..3 => tokens[rng.random_range(0..tokens.len())].clone(),
        3 => String::new(),
        4 => "garbage".into(),
        5 => {
            let exp = pick(rng, &["4000000000", "9223372036854775808", "-5", "1.5e300", "\"x\"", "null"]);
            format!(
                "{}.{}.{}",
                b64("{}"),
                b64(&format!(r#"{{"id":"{}","exp":{exp}}}"#, rng.random::<u32>())),
                b64("sig")
            )
        }
        6 => "a".repeat(rng.random_range(1..20_000)),
        _ => {
            let mut t = tokens[0].clone().into_bytes();
            let i = rng.random_range(0..t.len());
            t[i] = b"ABCxyz019._-"[rng.random_range(0..12)];
            String::from_utf8_lossy(&t).into_owned()
        }
    }
}

fn channel(rng: &mut StdRng) -> String {
    let long = "a".repeat(300);
    match rng.random_range(0..10) {
        0..4 => format!("fz.{}", rng.random_range(0..20)),
        4 => "fz".into(),
        5 => pick(rng, &["", ".", "fz..x", "fz.*", ">", "fz.>", "fz x", "chät", "fz.\u{0}", "fz.\n"]).into(),
        6 => long,
        7 => (0..rng.random_range(1..40)).map(|_| char::from(rng.random_range(32u8..127))).collect(),
        _ => format!("fz.{}.{}", rng.random::<u16>(), rng.random::<u16>()),
    }
}

fn text(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 => String::new(),
        1 => "x".repeat(4096),
        2 => "x".repeat(4097),
        3 => "é".repeat(rng.random_range(1..3000)),
        4 => {
            (0..rng.random_range(1..100)).map(|_| char::from_u32(rng.random_range(1..0xD7FF)).unwrap_or('?')).collect()
        }
        _ => "hello".into(),
    }
}

fn cursor(rng: &mut StdRng) -> Option<Cursor> {
    let epoch = match rng.random_range(0..4) {
        0 => String::new(),
        1 => "1a2b3c".into(),
        2 => "not an epoch!".into(),
        _ => "e".repeat(rng.random_range(0..200)),
    };
    match rng.random_range(0..4) {
        0 => None,
        1 => Some(Cursor { position: Some(Position::SinceSeq(rng.random())), epoch }),
        2 => Some(Cursor { position: Some(Position::SinceTs(rng.random())), epoch }),
        _ => Some(Cursor { position: None, epoch }),
    }
}

/// One random gRPC call; the status it ended with.
async fn grpc(client: &Client, tokens: &[String], rng: &mut StdRng) -> (&'static str, Result<(), tonic::Status>) {
    let mut c = client.clone();
    let token = token(rng, tokens);
    let call = rng.random_range(0..8);
    let timeout = Duration::from_millis(if rng.random_bool(0.1) { 1 } else { 2_000 });
    let outcome = tokio::time::timeout(timeout, async {
        match call {
            0 => {
                let key = pick(rng, &["", "k1", "has space", &"k".repeat(200)]).to_owned();
                c.publish_with_key(&token, &channel(rng), &text(rng), &key).await.map(|_| ())
            }
            1 => c.publish_ephemeral(&token, &channel(rng), &text(rng)).await.map(|_| ()),
            2 => {
                let n = rng.random_range(0..70);
                let channels: Vec<(String, Option<Cursor>)> = (0..n).map(|_| (channel(rng), cursor(rng))).collect();
                let refs: Vec<(&str, Option<Cursor>)> = channels.iter().map(|(c, p)| (c.as_str(), p.clone())).collect();
                let mut sub = c.subscribe_at(&token, &refs).await?;
                for _ in 0..rng.random_range(0..4) {
                    match sub.try_next(Duration::from_millis(50)).await {
                        Some(Err(s)) => return Err(s),
                        None => break,
                        Some(Ok(_)) => {}
                    }
                }
                Ok(())
            }
            3 => c.history_at(&token, &channel(rng), cursor(rng), rng.random_range(0..3000)).await.map(|_| ()),
            4 => {
                let stream = pick(rng, &["", "abcdefghij-1", "nonsense", "zzzzzzzzzz-99999999999999999999", "a-b-c"]);
                let seqs: Vec<u64> = (0..rng.random_range(0..1500)).map(|_| rng.random()).collect();
                c.ack(&token, stream, &channel(rng), pick(rng, &["", "x", "!!"]), &seqs).await.map(|_| ())
            }
            5 => {
                let stream = pick(rng, &["", "abcdefghij-1", "nonsense", "q-1"]);
                c.refresh_token(&token, stream).await.map(|_| ())
            }
            6 => c.presence(&token, &channel(rng)).await.map(|_| ()),
            _ => c.presence_stats(&token, &channel(rng)).await.map(|_| ()),
        }
    })
    .await;
    let outcome = outcome.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("client gave up")));
    let methods =
        ["Publish", "Publish(ephemeral)", "Subscribe", "History", "Ack", "RefreshToken", "Presence", "PresenceStats"];
    (methods[call], outcome)
}

/// One raw gRPC-web request over HTTP/1.1; "<http status>/<grpc-status>".
async fn grpc_web(http: &reqwest::Client, addr: &str, rng: &mut StdRng) -> String {
    let method =
        pick(rng, &["Publish", "History", "Subscribe", "Ack", "RefreshToken", "Presence", "PresenceStats", "Nope"]);
    let path =
        if rng.random_bool(0.05) { "/../../etc/passwd".to_owned() } else { format!("/relay.v1.RelayService/{method}") };
    let valid = proto::PublishRequest {
        channelid: "fz.web".into(),
        text: "hi".into(),
        idempotency_key: String::new(),
        ephemeral: rng.random_bool(0.3),
    }
    .encode_to_vec();
    let mut body = match rng.random_range(0..5) {
        0 => frame(&valid, valid.len() as u32),
        1 => {
            let mut b = frame(&valid, valid.len() as u32);
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            b
        }
        2 => frame(&valid, rng.random()), // a lying length prefix
        3 => frame(&valid, valid.len() as u32)[..rng.random_range(0..5)].to_vec(), // truncated
        _ => (0..rng.random_range(0..2048)).map(|_| rng.random()).collect(),
    };
    if rng.random_bool(0.02) {
        body.resize(3 << 20, 0);
    }
    let content_type = pick(rng, &["application/grpc-web+proto", "application/grpc-web-text", "text/plain", ""]);
    let sent = http
        .post(format!("{addr}{path}"))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header("authorization", "Bearer garbage")
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match sent {
        Ok(r) => {
            let grpc = r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            format!("{}/{grpc}", r.status().as_u16())
        }
        Err(e) if e.is_timeout() => "timeout".into(),
        Err(e) => {
            format!("connection error: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())
        }
    }
}

/// A gRPC-web data frame: flag byte, big-endian length, message.
fn frame(message: &[u8], length: u32) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(message);
    out
}
