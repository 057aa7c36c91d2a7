//! Ack: a subscriber says it processed queue messages of one of its streams. They count as
//! delivered then (JetStream acks them) and the stream pulls more.

use tonic::Request;

use crate::Relay;
use crate::error::{Error, Result};
use crate::proto::{AckRequest, AckResponse};
use crate::route::{self, Call};

/// Seqs one call may ack.
const MAX_SEQS: usize = 1024;

pub async fn ack(relay: &Relay, req: Request<AckRequest>) -> Result<AckResponse> {
    let user = relay.authenticate(&req).await?.user;
    let req = req.into_inner();
    let channel = super::channel_id(&req.channelid)?;
    if req.seqs.is_empty() {
        return Err(Error::InvalidArgument("ack at least one seq".into()));
    }
    if req.seqs.len() > MAX_SEQS {
        return Err(Error::InvalidArgument(format!("at most {MAX_SEQS} seqs per ack")));
    }
    super::epoch(&req.epoch)?;
    let call = Call::Ack {
        stream: req.stream_id.clone(),
        user: user.id,
        channel: channel.to_string(),
        epoch: req.epoch,
        seqs: req.seqs,
    };
    let acked = route::call(relay, &req.stream_id, call).await?;
    Ok(AckResponse { acked: acked.min(u64::from(u32::MAX)) as u32 })
}
