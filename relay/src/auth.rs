//! PocketBase token verification, cached.
//!
//! A token is verified with `POST /api/collections/<collection>/auth-refresh`: 200 gives the user's
//! record, 401/403 mean the token is not (or no longer) valid. Anything else (timeout, refused
//! connection, 5xx) is UNAVAILABLE: a PocketBase outage must never look like a wrong password.
//!
//! Answers are cached until the earlier of the token's `exp` and the configured TTL. Concurrent
//! checks of one token share one call: the first caller's future is stored in the cache, and the
//! others await a clone of it (`Shared`), so a reconnect storm costs PocketBase one call per token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde::Deserialize;

use crate::error::{Error, Result};

/// How long a refusal is remembered: short, so a fixed account works again quickly.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Above this many cached tokens, expired entries are swept on insert.
const SWEEP_ABOVE: usize = 10_000;

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The PocketBase record id: the only `userid` the relay ever stamps on a message.
    pub id: String,
    /// The record's `name`, shown to other users; may be empty.
    pub name: String,
}

/// The outcome of one check, shareable between the callers waiting for it.
#[derive(Clone, Debug)]
enum Outcome {
    Valid(User),
    Invalid(String),
    Unreachable(String),
}

type Check = Shared<BoxFuture<'static, Outcome>>;

struct Slot {
    check: Check,
    /// None while the check runs; then when the answer stops being trusted.
    expires: Option<Instant>,
}

/// Verifies PocketBase tokens; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    refresh_url: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, Slot>>,
}

impl Verifier {
    pub fn new(pocketbase_url: &str, collection: &str, ttl: Duration, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| Error::unavailable("http client", e))?;
        let refresh_url =
            format!("{}/api/collections/{}/auth-refresh", pocketbase_url.trim_end_matches('/'), collection);
        Ok(Self { inner: Arc::new(Inner { http, refresh_url, ttl, cache: Mutex::new(HashMap::new()) }) })
    }

    /// Verifies the `authorization` metadata of a call.
    pub async fn verify_metadata(&self, md: &tonic::metadata::MetadataMap) -> Result<User> {
        Ok(self.caller(md).await?.user)
    }

    /// Verifies the `authorization` metadata of a call, keeping the token and its expiry (for
    /// streams, which are checked again while they last).
    pub async fn caller(&self, md: &tonic::metadata::MetadataMap) -> Result<Caller> {
        let token = bearer(md)?;
        let user = self.verify(token).await?;
        let expires = token_expiry(token).map_or(0, unix_secs);
        Ok(Caller { user, token: token.to_owned(), expires })
    }
}

/// A verified caller and the token it came with.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: User,
    pub token: String,
    /// The token's `exp`, Unix seconds.
    pub expires: i64,
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

impl Verifier {
    /// Verifies one token, from cache when it can.
    pub async fn verify(&self, token: &str) -> Result<User> {
        let exp =
            token_expiry(token).ok_or_else(|| Error::Unauthenticated("token is not a PocketBase token".into()))?;
        if exp <= SystemTime::now() {
            return Err(Error::Unauthenticated("token has expired; log in again".into()));
        }
        let check = self.check_for(token);
        let outcome = check.clone().await;
        self.settle(token, &check, &outcome, exp);
        match outcome {
            Outcome::Valid(user) => Ok(user),
            Outcome::Invalid(why) => Err(Error::Unauthenticated(why)),
            Outcome::Unreachable(why) => Err(Error::unavailable("pocketbase", why)),
        }
    }

    /// The running or finished check of `token`, starting one if there is none.
    fn check_for(&self, token: &str) -> Check {
        let mut cache = self.inner.cache.lock().expect("auth cache lock");
        if let Some(slot) = cache.get(token) {
            match slot.expires {
                Some(at) if at <= Instant::now() => {}
                _ => return slot.check.clone(),
            }
        }
        if cache.len() > SWEEP_ABOVE {
            let now = Instant::now();
            cache.retain(|_, s| s.expires.is_none_or(|at| at > now));
        }
        let inner = self.inner.clone();
        let owned = token.to_owned();
        let check = async move { inner.call_pocketbase(&owned).await }.boxed().shared();
        cache.insert(token.to_owned(), Slot { check: check.clone(), expires: None });
        check
    }

    /// Records how long the answer of `check` may be trusted; forgets it if it should not be.
    fn settle(&self, token: &str, check: &Check, outcome: &Outcome, exp: SystemTime) {
        let mut cache = self.inner.cache.lock().expect("auth cache lock");
        let Some(slot) = cache.get_mut(token) else { return };
        if !slot.check.ptr_eq(check) || slot.expires.is_some() {
            return;
        }
        let ttl = match outcome {
            Outcome::Valid(_) => {
                let until_exp = exp.duration_since(SystemTime::now()).unwrap_or_default();
                self.inner.ttl.min(until_exp)
            }
            Outcome::Invalid(_) => NEGATIVE_TTL.min(self.inner.ttl),
            Outcome::Unreachable(_) => {
                cache.remove(token);
                return;
            }
        };
        slot.expires = Some(Instant::now() + ttl);
    }
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
        let started = Instant::now();
        let reply = self.http.post(&self.refresh_url).header("Authorization", token).send().await;
        crate::metrics::observe_auth_call(started.elapsed());
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return Outcome::Unreachable(format!("calling {}: {e}", self.refresh_url)),
        };
        let status = reply.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Outcome::Invalid("token was refused by PocketBase; log in again".into());
        }
        if !status.is_success() {
            return Outcome::Unreachable(format!("{} answered {status}", self.refresh_url));
        }
        match reply.json::<RefreshReply>().await {
            Ok(r) if !r.record.id.is_empty() => Outcome::Valid(User { id: r.record.id, name: r.record.name }),
            Ok(_) => Outcome::Unreachable("PocketBase returned a record without an id".into()),
            Err(e) => Outcome::Unreachable(format!("reading PocketBase's answer: {e}")),
        }
    }
}

/// The `exp` claim of a JWT, read without verifying it (only PocketBase can): used to refuse an
/// expired token without a call and to cap how long a valid one is cached.
fn token_expiry(token: &str) -> Option<SystemTime> {
    #[derive(Deserialize)]
    struct Claims {
        exp: u64,
    }
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(claims.exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(payload))
    }

    #[test]
    fn reads_exp_without_verifying() {
        let t = jwt(r#"{"id":"u1","exp":2000000000}"#);
        assert_eq!(token_expiry(&t), Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)));
        assert_eq!(token_expiry("garbage"), None);
        assert_eq!(token_expiry("a.b.c"), None);
        assert_eq!(token_expiry(&jwt(r#"{"id":"u1"}"#)), None);
        assert_eq!(token_expiry(&format!("{}.extra", jwt(r#"{"exp":1}"#))), None);
    }

    #[tokio::test]
    async fn refuses_expired_and_malformed_tokens_without_a_call() {
        // Port 9 (discard) is never asked: these are refused before any call.
        let v =
            Verifier::new("http://127.0.0.1:9", "users", Duration::from_secs(60), Duration::from_millis(200)).unwrap();
        assert!(matches!(v.verify("nope").await, Err(Error::Unauthenticated(_))));
        assert!(matches!(v.verify(&jwt(r#"{"exp":1}"#)).await, Err(Error::Unauthenticated(_))));
    }

    #[tokio::test]
    async fn unreachable_pocketbase_is_unavailable_and_not_cached() {
        let v =
            Verifier::new("http://127.0.0.1:9", "users", Duration::from_secs(60), Duration::from_millis(200)).unwrap();
        let t = jwt(r#"{"id":"u1","exp":4000000000}"#);
        assert!(matches!(v.verify(&t).await, Err(Error::Unavailable { .. })));
        assert!(v.inner.cache.lock().unwrap().is_empty());
    }
}
