//! `relayctl`: a terminal client. Log in to PocketBase, publish, subscribe (printing messages as
//! they arrive) and read history.
//!
//! ```text
//! export RELAY_TOKEN=$(relayctl login alice@example.com 'alice-password')
//! relayctl subscribe chat --since-seq 0
//! relayctl publish chat "hello"
//! relayctl history chat --limit 20
//! relayctl publish chat "typing" --ephemeral
//! relayctl presence chat
//! ```
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use relay::proto::relay_service_client::RelayServiceClient;
use relay::proto::{
    AckRequest, ChannelSubscription, Cursor, HistoryRequest, Message, PresenceRequest, PresenceStatsRequest,
    PublishRequest, SubscribeRequest, cursor::Position, subscribe_response::Event,
};
use tonic::Request;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "relayctl", version, about = "Terminal client for the relay")]
struct Cli {
    /// The relay's gRPC address.
    #[arg(long, env = "RELAY_ADDR", default_value = "http://127.0.0.1:50051", global = true)]
    relay: String,
    /// PocketBase, for `login`.
    #[arg(long, env = "RELAY_POCKETBASE_URL", default_value = "http://127.0.0.1:8090", global = true)]
    pocketbase: String,
    /// The PocketBase auth collection, for `login`.
    #[arg(long, env = "RELAY_POCKETBASE_COLLECTION", default_value = "users", global = true)]
    collection: String,
    /// PocketBase token (from `relayctl login`).
    #[arg(long, env = "RELAY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Logs in to PocketBase and prints the token.
    Login { identity: String, password: String },
    /// Publishes one message and prints it as stored.
    Publish {
        channel: String,
        text: String,
        /// A publish retried with the same key is stored once.
        #[arg(long, default_value = "")]
        key: String,
        /// Delivered to the streams open now, never stored (where the channel allows it).
        #[arg(long, conflicts_with = "key")]
        ephemeral: bool,
    },
    /// Prints who is on a channel (one line per user), then the counts.
    Presence {
        channel: String,
        /// Only the counts (PresenceStats: cheap on any channel).
        #[arg(long)]
        stats: bool,
    },
    /// Prints history after the cursor, then live messages, until interrupted. Queue messages are
    /// acked once printed.
    Subscribe {
        #[arg(required = true)]
        channels: Vec<String>,
        #[arg(long, conflicts_with = "since_ts")]
        since_seq: Option<u64>,
        #[arg(long)]
        since_ts: Option<i64>,
        /// The epoch the cursor belongs to (printed with each message); a changed epoch means the
        /// channel's history was lost, and the relay says so.
        #[arg(long, default_value = "")]
        epoch: String,
    },
    /// Prints one page of history.
    History {
        channel: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, conflicts_with = "since_ts")]
        since_seq: Option<u64>,
        #[arg(long)]
        since_ts: Option<i64>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Login { ref identity, ref password } => {
            println!("{}", login(&cli.pocketbase, &cli.collection, identity, password).await?);
            Ok(())
        }
        Command::Publish { ref channel, ref text, ref key, ephemeral } => {
            let mut client = connect(&cli.relay).await?;
            let req = PublishRequest {
                channelid: channel.clone(),
                text: text.clone(),
                idempotency_key: key.clone(),
                ephemeral,
            };
            let reply = client.publish(authed(&cli.token, req)?).await?.into_inner();
            if let Some(m) = reply.message {
                print_message(&m);
            }
            Ok(())
        }
        Command::Presence { ref channel, stats } => {
            let mut client = connect(&cli.relay).await?;
            if !stats {
                let req = PresenceRequest { channelid: channel.clone() };
                for m in client.presence(authed(&cli.token, req)?).await?.into_inner().members {
                    let name = if m.username.is_empty() { String::new() } else { format!(" ({})", m.username) };
                    println!("{}{name}  streams {}  since {}", m.userid, m.streams, clock(m.since));
                }
            }
            let req = PresenceStatsRequest { channelid: channel.clone() };
            let counts = client.presence_stats(authed(&cli.token, req)?).await?.into_inner();
            println!("# {channel}: {} users, {} streams", counts.members, counts.streams);
            Ok(())
        }
        Command::Subscribe { ref channels, since_seq, since_ts, ref epoch } => {
            let mut client = connect(&cli.relay).await?;
            let cursor = cursor(since_seq, since_ts, epoch);
            let channels =
                channels.iter().map(|c| ChannelSubscription { channelid: c.clone(), cursor: cursor.clone() }).collect();
            let mut stream = client.subscribe(authed(&cli.token, SubscribeRequest { channels })?).await?.into_inner();
            let mut stream_id = String::new();
            while let Some(event) = stream.next().await {
                match event?.event {
                    Some(Event::Started(s)) => stream_id = s.stream_id,
                    Some(Event::Message(m)) => {
                        print_message(&m);
                        if m.needs_ack {
                            let req = AckRequest {
                                stream_id: stream_id.clone(),
                                channelid: m.channelid.clone(),
                                seqs: vec![m.seq],
                                epoch: m.epoch.clone(),
                            };
                            client.ack(authed(&cli.token, req)?).await?;
                        }
                    }
                    Some(Event::Join(j)) => println!("{} + {} joined", j.channelid, who(&j.userid, &j.username)),
                    Some(Event::Leave(l)) => println!("{} - {} left", l.channelid, who(&l.userid, &l.username)),
                    Some(Event::PresenceChanged(c)) => {
                        println!("{} # {} more joined, {} more left", c.channelid, c.joined, c.left)
                    }
                    Some(Event::Ephemeral(m)) => {
                        println!("{} ~ {}: {}", m.channelid, who(&m.userid, &m.username), m.text)
                    }
                    Some(Event::Recovery(r)) if !r.recovered => {
                        eprintln!("# {} (epoch {}): messages may be missing here: {}", r.channelid, r.epoch, r.reason)
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        Command::History { ref channel, limit, since_seq, since_ts } => {
            let mut client = connect(&cli.relay).await?;
            let req = HistoryRequest { channelid: channel.clone(), cursor: cursor(since_seq, since_ts, ""), limit };
            let page = client.history(authed(&cli.token, req)?).await?.into_inner();
            page.messages.iter().for_each(print_message);
            if page.more {
                eprintln!("# more: continue with --since-seq {}", page.messages.last().map_or(0, |m| m.seq));
            }
            Ok(())
        }
    }
}

async fn connect(addr: &str) -> anyhow::Result<RelayServiceClient<Channel>> {
    RelayServiceClient::connect(addr.to_owned()).await.with_context(|| format!("connecting to the relay at {addr}"))
}

fn authed<T>(token: &Option<String>, msg: T) -> anyhow::Result<Request<T>> {
    let token = token.as_deref().context("no token: run `relayctl login` and set RELAY_TOKEN (or pass --token)")?;
    let mut req = Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().context("token is not ASCII")?);
    Ok(req)
}

fn cursor(since_seq: Option<u64>, since_ts: Option<i64>, epoch: &str) -> Option<Cursor> {
    let position = since_seq.map(Position::SinceSeq).or(since_ts.map(Position::SinceTs))?;
    Some(Cursor { position: Some(position), epoch: epoch.to_owned() })
}

async fn login(pocketbase: &str, collection: &str, identity: &str, password: &str) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct Auth {
        token: String,
    }
    let url = format!("{}/api/collections/{collection}/auth-with-password", pocketbase.trim_end_matches('/'));
    let reply = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "identity": identity, "password": password }))
        .send()
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = reply.status();
    anyhow::ensure!(
        status.is_success(),
        "PocketBase refused the login ({status}): {}",
        reply.text().await.unwrap_or_default()
    );
    Ok(reply.json::<Auth>().await?.token)
}

fn print_message(m: &Message) {
    let who = who(&m.userid, &m.username);
    let again = if m.redelivered > 0 { format!(" (delivered {} times before)", m.redelivered) } else { String::new() };
    println!("{} #{} {} {who}: {}{again}  [epoch {}]", m.channelid, m.seq, clock(m.ts), m.text, m.epoch);
}

/// A display name, or the user id when there is none.
fn who<'a>(userid: &'a str, username: &'a str) -> &'a str {
    if username.is_empty() { userid } else { username }
}

/// Unix nanoseconds as a UTC time of day.
fn clock(ts: i64) -> String {
    let secs = ts / 1_000_000_000;
    let (h, mi, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let ms = (ts / 1_000_000) % 1000;
    format!("{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}
