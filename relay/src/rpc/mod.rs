//! The gRPC service: one module per RPC, each in the same shape (verify the caller, validate,
//! authorize, act, respond). This module holds what they share.

pub mod history;
pub mod outbox;
pub mod publish;
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
}

/// Parses a client-supplied channel id; INVALID_ARGUMENT with the reason.
pub fn channel_id(raw: &str) -> Result<ChannelId> {
    ChannelId::parse(raw).map_err(|e| Error::InvalidArgument(format!("bad channelid {raw:?}: {e}")))
}

/// A client cursor as a history position; None when unset (live only, or newest for History).
pub fn cursor(c: Option<&proto::Cursor>) -> Result<Option<After>> {
    match c.and_then(|c| c.position) {
        None => Ok(None),
        Some(Position::SinceSeq(seq)) => Ok(Some(After::Seq(seq))),
        Some(Position::SinceTs(ts)) if ts < 0 => {
            Err(Error::InvalidArgument(format!("bad cursor: since_ts {ts} is negative; it is Unix nanoseconds")))
        }
        Some(Position::SinceTs(ts)) => Ok(Some(After::Ts(ts))),
    }
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
        }
    }
}

impl From<&relay_channel::WireMessage> for proto::Message {
    fn from(m: &relay_channel::WireMessage) -> Self {
        m.clone().into()
    }
}
