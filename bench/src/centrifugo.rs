//! Centrifugo v6 as a peer: started here with its documented settings for the engine chosen
//! (memory or Redis), history and recovery on for the benchmark channels, and driven the way its
//! users drive it: clients over WebSocket with the JSON protocol, publishes through the server HTTP
//! API. The binary is built from the Go module by `scripts/bench.sh`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::targets::{Delivered, Deliveries, sent_ns};

const SECRET: &str = "bench-hmac-secret-bench-hmac-secret";
const API_KEY: &str = "bench-api-key";

pub struct Centrifugo {
    port: u16,
    engine: &'static str,
    child: Child,
    http: reqwest::Client,
    token: String,
    /// Each channel's epoch, learned at subscribe time (recovery needs it).
    epochs: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

pub fn binary() -> PathBuf {
    std::env::var_os("CENTRIFUGO_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        home.join(".cache/relay-test-bins/centrifugo-6.9.1")
    })
}

impl Centrifugo {
    pub async fn start(dir: &Path, redis_url: Option<String>) -> anyhow::Result<Self> {
        Self::start_with(dir, redis_url, false).await
    }

    /// With `presence`: channels keep presence and push joins and leaves to subscribers
    /// (`presence`, `join_leave`, `force_push_join_leave`), as the relay's `presence` scenario asks.
    pub async fn start_with(dir: &Path, redis_url: Option<String>, presence: bool) -> anyhow::Result<Self> {
        let port = relay_tests::free_port();
        let engine = match &redis_url {
            Some(url) => json!({ "type": "redis", "redis": { "address": [url] } }),
            None => json!({ "type": "memory" }),
        };
        let config = json!({
            "http_server": { "address": "127.0.0.1", "port": port },
            "log": { "level": "error" },
            "client": { "token": { "hmac_secret_key": SECRET }, "allowed_origins": ["*"] },
            "http_api": { "key": API_KEY },
            "channel": { "without_namespace": {
                "allow_subscribe_for_client": true,
                "history_size": 1000,
                "history_ttl": "24h",
                "force_recovery": true,
                "presence": presence,
                "join_leave": presence,
                "force_push_join_leave": presence
            } },
            "engine": engine,
        });
        let path = dir.join("centrifugo.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let log = std::fs::File::create(dir.join("centrifugo.log"))?;
        let child = Command::new(binary())
            .arg("--config")
            .arg(&path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (scripts/bench.sh builds it)", binary().display()))?;
        let me = Self {
            port,
            engine: if redis_url.is_some() { "redis" } else { "memory" },
            child,
            http: reqwest::Client::new(),
            token: jwt("bench"),
            epochs: Default::default(),
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(me);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("centrifugo did not start; see {}", dir.join("centrifugo.log").display())
    }

    pub fn name(&self) -> String {
        format!("centrifugo ({})", self.engine)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Calls the server HTTP API method `method` with `body`; returns its `result`.
    pub async fn api(&self, method: &str, body: Value) -> anyhow::Result<Value> {
        let reply = self
            .http
            .post(format!("http://127.0.0.1:{}/api/{method}", self.port))
            .header("X-API-Key", API_KEY)
            .json(&body)
            .send()
            .await?;
        let mut body: Value = reply.error_for_status()?.json().await?;
        if let Some(e) = body.get("error") {
            bail!("{method}: {e}");
        }
        Ok(body["result"].take())
    }

    /// A client of user `user` subscribed to `channel`; counts the join and leave pushes it gets
    /// into `events` until dropped.
    pub async fn member(
        &self,
        user: &str,
        channel: &str,
        events: Arc<std::sync::atomic::AtomicU64>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let url = format!("ws://127.0.0.1:{}/connection/websocket", self.port);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        ws.send(Message::text(json!({ "id": 1, "connect": { "token": jwt(user) } }).to_string())).await?;
        ws.send(Message::text(json!({ "id": 2, "subscribe": { "channel": channel } }).to_string())).await?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), ws.next()).await?.context("closed")??;
            let Message::Text(text) = msg else { continue };
            let replies: Vec<Value> =
                text.lines().filter(|l| !l.is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?;
            if let Some(e) = replies.iter().find_map(|v| v.get("error")) {
                bail!("centrifugo: {e}");
            }
            if replies.iter().any(|v| v.get("id") == Some(&json!(2))) {
                break;
            }
        }
        Ok(follow(ws, move |push| {
            if push.get("join").is_some() || push.get("leave").is_some() {
                events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            true
        }))
    }

    pub async fn publish(&self, channel: &str, text: String) -> anyhow::Result<()> {
        let reply = self
            .http
            .post(format!("http://127.0.0.1:{}/api/publish", self.port))
            .header("X-API-Key", API_KEY)
            .json(&json!({ "channel": channel, "data": { "t": text } }))
            .send()
            .await?;
        let body: Value = reply.error_for_status()?.json().await?;
        if let Some(e) = body.get("error") {
            bail!("publish: {e}");
        }
        Ok(())
    }

    /// A WebSocket client: connect, subscribe (recovering from `after` when given), then yield
    /// publications; answers server pings.
    pub async fn subscribe(&self, channel: &str, after: Option<u64>) -> anyhow::Result<Deliveries> {
        let url = format!("ws://127.0.0.1:{}/connection/websocket", self.port);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        ws.send(Message::text(json!({ "id": 1, "connect": { "token": self.token } }).to_string())).await?;
        let mut sub = json!({ "channel": channel });
        if let Some(offset) = after {
            let epoch = self.epochs.lock().expect("epochs").get(channel).cloned().unwrap_or_default();
            sub = json!({ "channel": channel, "recover": true, "offset": offset, "epoch": epoch });
        }
        ws.send(Message::text(json!({ "id": 2, "subscribe": sub }).to_string())).await?;
        // Wait for the subscribe reply; recovered publications come inside it.
        let mut first = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?.context("closed")??;
            let Message::Text(text) = msg else { continue };
            let mut subscribed = false;
            for line in text.lines().filter(|l| !l.is_empty()) {
                let v: Value = serde_json::from_str(line)?;
                if let Some(e) = v.get("error") {
                    bail!("centrifugo: {e}");
                }
                if v.get("id") == Some(&json!(2)) {
                    let r = &v["subscribe"];
                    if let Some(epoch) = r["epoch"].as_str() {
                        self.epochs.lock().expect("epochs").insert(channel.to_owned(), epoch.to_owned());
                    }
                    first.extend(r["publications"].as_array().into_iter().flatten().map(publication));
                    subscribed = true;
                }
            }
            if subscribed {
                break;
            }
        }
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
        for d in first {
            let _ = out_tx.send(d);
        }
        follow(ws, move |push| push.get("pub").is_none_or(|p| out_tx.send(publication(p)).is_ok()));
        Ok(Box::pin(tokio_stream_from(out_rx)))
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads a client connection until it closes: answers the server's pings (or it drops the
/// connection) and hands each push to `on_push`, which returns false to stop.
fn follow(ws: Socket, mut on_push: impl FnMut(&Value) -> bool + Send + 'static) -> tokio::task::JoinHandle<()> {
    let (mut tx, mut rx) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            let Message::Text(text) = msg else { continue };
            for line in text.lines().filter(|l| !l.is_empty()) {
                let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
                if v.as_object().is_some_and(|o| o.is_empty()) {
                    if tx.send(Message::text("{}")).await.is_err() {
                        return;
                    }
                } else if let Some(push) = v.get("push")
                    && !on_push(push)
                {
                    return;
                }
            }
        }
    })
}

fn publication(p: &Value) -> Delivered {
    Delivered { sent_ns: sent_ns(p["data"]["t"].as_str().unwrap_or("")), position: p["offset"].as_u64() }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Delivered>,
) -> impl futures::Stream<Item = Delivered> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// An HS256 connection token for user `sub`.
fn jwt(sub: &str) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() + 3600;
    let signing_input =
        format!("{}.{}", b64(&json!({"alg": "HS256", "typ": "JWT"})), b64(&json!({"sub": sub, "exp": exp})));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}
