//! The gRPC service: one module per RPC, each in the same shape (verify the caller, validate,
//! authorize, act, respond). This module holds what they share.

pub mod ack;
pub mod codec;
pub mod history;
pub mod outbox;
pub mod presence;
pub mod publish;
pub mod publish_stream;
pub mod refresh;
pub mod subscribe;

use std::sync::Arc;

use relay_channel::ChannelId;
use tonic::{Request, Response, Status};

use crate::Relay;
use crate::error::{Error, Result};
use crate::proto::{self, cursor::Position};
use crate::store::After;

/// The tonic service; every method delegates to its module.
#[derive(Clone)]
pub struct Service {
    relay: Arc<Relay>,
}

impl Service {
    pub fn new(relay: Arc<Relay>) -> Self {
        Self { relay }
    }
}

/// Counts the call's outcome and turns errors into statuses.
fn finish<T>(method: &str, result: Result<T>) -> Result<Response<T>, Status> {
    let result = result.map_err(Status::from);
    crate::metrics::rpc(method, result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok));
    result.map(Response::new)
}

#[tonic::async_trait]
impl proto::relay_service_server::RelayService for Service {
    async fn publish(&self, req: Request<proto::PublishRequest>) -> Result<Response<proto::PublishResponse>, Status> {
        finish("Publish", publish::publish(&self.relay, req).await)
    }

    type PublishStreamStream = publish_stream::ResponseStream;

    async fn publish_stream(
        &self,
        req: Request<tonic::Streaming<proto::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        // Counted here when refused at the start; a call that runs is counted when it ends.
        match publish_stream::publish_stream(self.relay.clone(), req).await {
            Ok(stream) => Ok(Response::new(stream)),
            Err(e) => finish("PublishStream", Err(e)),
        }
    }

    type SubscribeStream = subscribe::ResponseStream;

    async fn subscribe(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        finish("Subscribe", subscribe::subscribe(self.relay.clone(), req).await)
    }

    async fn history(&self, req: Request<proto::HistoryRequest>) -> Result<Response<proto::HistoryResponse>, Status> {
        finish("History", history::history(&self.relay, req).await)
    }

    async fn ack(&self, req: Request<proto::AckRequest>) -> Result<Response<proto::AckResponse>, Status> {
        finish("Ack", ack::ack(&self.relay, req).await)
    }

    async fn presence(
        &self,
        req: Request<proto::PresenceRequest>,
    ) -> Result<Response<proto::PresenceResponse>, Status> {
        finish("Presence", presence::presence(&self.relay, req).await)
    }

    async fn presence_stats(
        &self,
        req: Request<proto::PresenceStatsRequest>,
    ) -> Result<Response<proto::PresenceStatsResponse>, Status> {
        finish("PresenceStats", presence::presence_stats(&self.relay, req).await)
    }

    async fn refresh_token(
        &self,
        req: Request<proto::RefreshTokenRequest>,
    ) -> Result<Response<proto::RefreshTokenResponse>, Status> {
        finish("RefreshToken", refresh::refresh_token(&self.relay, req).await)
    }
}

/// Parses a client-supplied channel id; INVALID_ARGUMENT with the reason.
pub fn channel_id(raw: &str) -> Result<ChannelId> {
    ChannelId::parse(raw)
        .map_err(|e| Error::InvalidArgument(format!("bad channelid {}: {e}", crate::error::quote(raw))))
}

/// Where a client resumes: a position and the epoch it belongs to (empty: taken as is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    pub after: After,
    pub epoch: String,
}

/// The longest epoch a client may send (the relay makes them 15 characters long).
const MAX_EPOCH: usize = 64;

/// A client cursor as a history position; None when unset (live only, or newest for History).
pub fn cursor(c: Option<&proto::Cursor>) -> Result<Option<Resume>> {
    let Some(c) = c else { return Ok(None) };
    let after = match c.position {
        None if c.epoch.is_empty() => return Ok(None),
        None => return Err(Error::InvalidArgument("bad cursor: an epoch without since_seq or since_ts".into())),
        Some(Position::SinceSeq(seq)) => After::Seq(seq),
        Some(Position::SinceTs(ts)) if ts < 0 => {
            return Err(Error::InvalidArgument(format!(
                "bad cursor: since_ts {ts} is negative; it is Unix nanoseconds"
            )));
        }
        Some(Position::SinceTs(ts)) => After::Ts(ts),
    };
    Ok(Some(Resume { after, epoch: epoch(&c.epoch)?.to_owned() }))
}

/// A client-supplied epoch (empty is fine: any).
pub fn epoch(raw: &str) -> Result<&str> {
    if raw.len() > MAX_EPOCH || !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::InvalidArgument(format!(
            "bad epoch {:?}: not one the relay gave out (letters and digits, at most {MAX_EPOCH})",
            raw.chars().take(MAX_EPOCH).collect::<String>()
        )));
    }
    Ok(raw)
}

impl From<relay_channel::WireMessage> for proto::Message {
    fn from(m: relay_channel::WireMessage) -> Self {
        proto::Message {
            channelid: m.channelid,
            userid: m.userid,
            text: m.text,
            ts: m.ts,
            seq: m.seq,
            id: m.id,
            username: m.username,
            epoch: m.epoch,
            redelivered: 0,
            needs_ack: false,
        }
    }
}

impl From<&relay_channel::WireMessage> for proto::Message {
    fn from(m: &relay_channel::WireMessage) -> Self {
        m.clone().into()
    }
}
