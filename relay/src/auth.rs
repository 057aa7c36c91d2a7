//! PocketBase token verification, cached, bounded, and cheap to attack.
//!
//! A token is verified with `POST /api/collections/<collection>/auth-refresh`: 200 gives the user's
//! record, 401/403/404 mean the token is not (or no longer) valid. Anything else (timeout, refused
//! connection, 5xx) is UNAVAILABLE: a PocketBase outage must never look like a wrong password.
//!
//! What an unauthenticated client can make the relay do is bounded at every step:
//! - a token that is not JWT-shaped, or whose `exp` passed (or is absurd), is refused without a call;
//! - answers are cached in a bounded cache (`moka`): valid ones until the earlier of the token's
//!   `exp` and `--auth-cache-ttl`, refusals for a few seconds, so a garbage token repeated costs one
//!   call;
//! - concurrent checks of one token share one call, which runs as a task of its own: a caller that
//!   gives up (a 1 ms `grpc-timeout`) leaves nothing behind, and the answer is cached for the next;
//! - a cache miss (a token never seen) is rate-limited per client address
//!   (`--unverified-tokens-per-second`), and PocketBase calls in flight are capped, so a flood of
//!   distinct garbage tokens costs a bounded number of calls and connections.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures::future::{BoxFuture, FutureExt, Shared};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// How long a refusal is remembered: short, so a fixed account works again quickly.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// PocketBase calls in flight at most; a check that cannot start within the timeout is UNAVAILABLE.
const MAX_CALLS_IN_FLIGHT: usize = 64;
/// Client addresses tracked by the rate limit of unverified tokens before idle ones are dropped.
const TRACKED_PEERS: usize = 10_000;

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The PocketBase record id: the only `userid` the relay ever stamps on a message.
    pub id: String,
    /// The record's `name`, shown to other users; may be empty.
    pub name: String,
}

/// A verified caller and the token it came with.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: User,
    pub token: String,
    /// The token's `exp`, Unix seconds.
    pub expires: i64,
}

/// The outcome of one check, shareable between the callers waiting for it.
#[derive(Clone, Debug)]
enum Outcome {
    Valid(User),
    Invalid(String),
    Unreachable(String),
}

/// A cache entry: a check under way, or its answer and how long it is trusted.
#[derive(Clone)]
enum Entry {
    Pending(Shared<BoxFuture<'static, Outcome>>),
    Done(Outcome, Duration),
}

/// How long entries live: a pending check only as long as a call may take.
struct Lifetimes {
    pending: Duration,
}

impl moka::Expiry<String, Entry> for Lifetimes {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(match entry {
            Entry::Pending(_) => self.pending,
            Entry::Done(_, ttl) => *ttl,
        })
    }

    fn expire_after_update(&self, key: &String, entry: &Entry, at: Instant, _: Option<Duration>) -> Option<Duration> {
        self.expire_after_create(key, entry, at)
    }
}

/// Limits of the verifier.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a valid answer is trusted (capped by the token's `exp`).
    pub ttl: Duration,
    /// How long a PocketBase call may take.
    pub timeout: Duration,
    /// Tokens cached at most.
    pub cache_size: u64,
    /// Cache misses one client address may cause per second (burst: five seconds' worth).
    pub misses_per_second: u32,
}

/// Verifies PocketBase tokens; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    refresh_url: String,
    limits: Limits,
    cache: moka::sync::Cache<String, Entry>,
    calls: Semaphore,
    misses: DefaultKeyedRateLimiter<IpAddr>,
}

impl Verifier {
    pub fn new(http: reqwest::Client, pocketbase_url: &str, collection: &str, limits: Limits) -> Self {
        let refresh_url =
            format!("{}/api/collections/{}/auth-refresh", pocketbase_url.trim_end_matches('/'), collection);
        let cache = moka::sync::Cache::builder()
            .max_capacity(limits.cache_size)
            .expire_after(Lifetimes { pending: limits.timeout * 2 })
            .build();
        let rate = NonZeroU32::new(limits.misses_per_second.max(1)).expect("at least one");
        let burst = NonZeroU32::new(limits.misses_per_second.max(1).saturating_mul(5)).expect("at least one");
        let misses = governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst));
        Self {
            inner: Arc::new(Inner {
                http,
                refresh_url,
                limits,
                cache,
                calls: Semaphore::new(MAX_CALLS_IN_FLIGHT),
                misses,
            }),
        }
    }

    /// Verifies the `authorization` metadata of a call.
    pub async fn verify_request<T>(&self, req: &tonic::Request<T>, peer: Option<IpAddr>) -> Result<User> {
        Ok(self.caller(req, peer).await?.user)
    }

    /// Verifies the `authorization` metadata of a call, keeping the token and its expiry (for
    /// streams, which are checked again while they last).
    pub async fn caller<T>(&self, req: &tonic::Request<T>, peer: Option<IpAddr>) -> Result<Caller> {
        let token = bearer(req.metadata())?;
        let user = self.verify(token, peer).await?;
        let expires = token_expiry(token).map_or(0, unix_secs);
        Ok(Caller { user, token: token.to_owned(), expires })
    }

    /// Verifies one token, from cache when it can. `peer`: the client's address, for the rate
    /// limit of tokens never seen (None for checks the relay makes by itself).
    pub async fn verify(&self, token: &str, peer: Option<IpAddr>) -> Result<User> {
        let exp =
            token_expiry(token).ok_or_else(|| Error::Unauthenticated("token is not a PocketBase token".into()))?;
        if exp <= SystemTime::now() {
            return Err(Error::Unauthenticated("token has expired; log in again".into()));
        }
        let cached = self.inner.cache.get(token);
        crate::metrics::auth_lookup(matches!(cached, Some(Entry::Done(..))));
        let entry = match cached {
            Some(entry) => entry,
            None => {
                if let Some(peer) = peer {
                    self.admit(peer)?;
                }
                let inner = self.inner.clone();
                let owned = token.to_owned();
                self.inner
                    .cache
                    .entry(token.to_owned())
                    .or_insert_with(|| Entry::Pending(spawn_check(inner, owned, exp)))
                    .into_value()
            }
        };
        let outcome = match entry {
            Entry::Done(outcome, _) => outcome,
            Entry::Pending(check) => check.await,
        };
        match outcome {
            Outcome::Valid(user) => Ok(user),
            Outcome::Invalid(why) => Err(Error::Unauthenticated(why)),
            Outcome::Unreachable(why) => Err(Error::unavailable("authentication service", why)),
        }
    }

    /// Counts a token never seen against its client's allowance: one per IPv4 address, one per
    /// IPv6 /64 (what one host usually holds).
    fn admit(&self, peer: IpAddr) -> Result<()> {
        let peer = network_of(peer);
        let misses = &self.inner.misses;
        if misses.len() > TRACKED_PEERS {
            misses.retain_recent();
        }
        misses.check_key(&peer).map_err(|_| {
            crate::metrics::dropped("unverified_token_rate");
            Error::ResourceExhausted("too many new tokens from your address; slow down".into())
        })
    }

    /// Tokens cached now (for tests and metrics).
    pub fn cached(&self) -> u64 {
        self.inner.cache.run_pending_tasks();
        self.inner.cache.entry_count()
    }
}

/// The address a client is counted by: an IPv4 address (mapped ones too), or an IPv6 /64.
fn network_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}

/// Starts the PocketBase call as a task of its own and returns a future every caller may await.
fn spawn_check(inner: Arc<Inner>, token: String, exp: SystemTime) -> Shared<BoxFuture<'static, Outcome>> {
    let task = tokio::spawn(async move {
        let outcome = inner.call_pocketbase(&token).await;
        inner.settle(token, &outcome, exp);
        outcome
    });
    async move { task.await.unwrap_or_else(|e| Outcome::Unreachable(format!("token check failed: {e}"))) }
        .boxed()
        .shared()
}

#[derive(Deserialize)]
struct RefreshReply {
    record: Record,
}

#[derive(Deserialize)]
struct Record {
    id: String,
    #[serde(default)]
    name: String,
}

impl Inner {
    async fn call_pocketbase(&self, token: &str) -> Outcome {
        let Ok(Ok(_permit)) = tokio::time::timeout(self.limits.timeout, self.calls.acquire()).await else {
            return Outcome::Unreachable("too many token checks in flight".into());
        };
        let started = Instant::now();
        let reply = self.http.post(&self.refresh_url).header("Authorization", token).send().await;
        crate::metrics::observe_auth_call(started.elapsed());
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Unreachable(format!("calling {}: {e}", crate::config::redact(&self.refresh_url)));
            }
        };
        let status = reply.status();
        if matches!(status.as_u16(), 401 | 403 | 404) {
            return Outcome::Invalid("token was refused by PocketBase; log in again".into());
        }
        if !status.is_success() {
            return Outcome::Unreachable(format!("PocketBase answered {status}"));
        }
        match reply.json::<RefreshReply>().await {
            Ok(r) if !r.record.id.is_empty() => Outcome::Valid(User { id: r.record.id, name: r.record.name }),
            Ok(_) => Outcome::Unreachable("PocketBase returned a record without an id".into()),
            Err(e) => Outcome::Unreachable(format!("reading PocketBase's answer: {e}")),
        }
    }

    /// Caches the answer for as long as it may be trusted; forgets an outage at once.
    fn settle(&self, token: String, outcome: &Outcome, exp: SystemTime) {
        let ttl = match outcome {
            Outcome::Valid(_) => self.limits.ttl.min(exp.duration_since(SystemTime::now()).unwrap_or_default()),
            Outcome::Invalid(_) => NEGATIVE_TTL.min(self.limits.ttl),
            Outcome::Unreachable(_) => {
                self.cache.invalidate(&token);
                return;
            }
        };
        self.cache.insert(token, Entry::Done(outcome.clone(), ttl));
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs().min(i64::MAX as u64) as i64)
}

/// The token of a call's `authorization` metadata (`Bearer <token>`).
fn bearer(md: &tonic::metadata::MetadataMap) -> Result<&str> {
    let raw = md
        .get("authorization")
        .ok_or_else(|| {
            Error::Unauthenticated("missing authorization metadata: send 'Bearer <PocketBase token>'".into())
        })?
        .to_str()
        .map_err(|_| Error::Unauthenticated("authorization metadata is not ASCII".into()))?;
    Ok(raw.strip_prefix("Bearer ").or_else(|| raw.strip_prefix("bearer ")).unwrap_or(raw).trim())
}

/// The longest token accepted, in bytes (PocketBase's are about 250).
const MAX_TOKEN: usize = 4096;

/// The `exp` claim of a JWT, read without verifying it (only PocketBase can): used to refuse an
/// expired token without a call and to cap how long a valid one is cached. None for anything that
/// is not a JWT with a representable `exp`.
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    #[derive(Deserialize)]
    struct Claims {
        exp: u64,
    }
    if token.len() > MAX_TOKEN {
        return None;
    }
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(payload))
    }

    fn verifier(url: &str) -> Verifier {
        let limits = Limits {
            ttl: Duration::from_secs(60),
            timeout: Duration::from_millis(200),
            cache_size: 1000,
            misses_per_second: 2,
        };
        Verifier::new(reqwest::Client::new(), url, "users", limits)
    }

    #[test]
    fn reads_exp_without_verifying() {
        let t = jwt(r#"{"id":"u1","exp":2000000000}"#);
        assert_eq!(token_expiry(&t), Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)));
        assert_eq!(token_expiry("garbage"), None);
        assert_eq!(token_expiry("a.b.c"), None);
        assert_eq!(token_expiry(&jwt(r#"{"id":"u1"}"#)), None);
        assert_eq!(token_expiry(&format!("{}.extra", jwt(r#"{"exp":1}"#))), None);
        assert_eq!(token_expiry(&jwt(r#"{"exp":18446744073709551615}"#)), None, "2^64-1 is no time");
        assert_eq!(token_expiry(&jwt(r#"{"exp":9223372036854775808}"#)), None, "2^63 must not panic");
        assert_eq!(token_expiry(&jwt(r#"{"exp":-1}"#)), None);
    }

    #[tokio::test]
    async fn refuses_expired_and_malformed_tokens_without_a_call() {
        // Port 9 (discard) is never asked: these are refused before any call.
        let v = verifier("http://127.0.0.1:9");
        assert!(matches!(v.verify("nope", None).await, Err(Error::Unauthenticated(_))));
        assert!(matches!(v.verify(&jwt(r#"{"exp":1}"#), None).await, Err(Error::Unauthenticated(_))));
        assert_eq!(v.cached(), 0);
    }

    #[tokio::test]
    async fn unreachable_pocketbase_is_unavailable_and_not_cached() {
        let v = verifier("http://127.0.0.1:9");
        let t = jwt(r#"{"id":"u1","exp":4000000000}"#);
        assert!(matches!(v.verify(&t, None).await, Err(Error::Unavailable { .. })));
        assert_eq!(v.cached(), 0);
    }

    #[tokio::test]
    async fn new_tokens_from_one_address_are_rate_limited() {
        let v = verifier("http://127.0.0.1:9");
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let mut limited = 0;
        for i in 0..20 {
            let t = jwt(&format!(r#"{{"id":"u{i}","exp":4000000000}}"#));
            if matches!(v.verify(&t, Some(peer)).await, Err(Error::ResourceExhausted(_))) {
                limited += 1;
            }
        }
        assert_eq!(limited, 10, "a burst of 10 (5 s at 2/s), then refused");
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let t = jwt(r#"{"id":"x","exp":4000000000}"#);
        assert!(!matches!(v.verify(&t, Some(other)).await, Err(Error::ResourceExhausted(_))), "per address");
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network_of(a), network_of(b), "one /64, one allowance");
        assert_ne!(network_of(a), network_of(c));
        assert_eq!(network_of("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(network_of("192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
