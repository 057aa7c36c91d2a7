//! Calls about a stream that another replica holds (`Ack`, `RefreshToken`): a browser's unary calls
//! go through the ingress to any replica, so the replica that takes the call forwards it over NATS
//! to the one named in the stream id (`relay.ctl.<replica>`), after verifying the caller's token
//! itself. The owner checks the stream belongs to that user and answers.
//!
//! Only relays should be allowed to publish on `relay.ctl.>` (NATS permissions); see
//! `docs/security.md`.

use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::Relay;
use crate::error::{Error, Result};

/// The subject a replica takes calls about its streams on.
pub fn subject(replica: &str) -> String {
    format!("relay.ctl.{replica}")
}

/// A call about a stream, already authenticated by the replica that took it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Call {
    Ack { stream: String, user: String, channel: String, epoch: String, seqs: Vec<u64> },
    Refresh { stream: String, user: String, token: String, expires: i64 },
}

/// The answer: a count, or the error as a status code and message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Answer {
    Ok(u64),
    Err { code: i32, message: String },
}

/// Runs `call` where its stream lives: here, or on the replica named in its stream id.
pub async fn call(relay: &Relay, stream: &str, call: Call) -> Result<u64> {
    if relay.streams.is_local(stream) {
        return handle(relay, call).await;
    }
    let Some(replica) = crate::streams::replica_of(stream) else {
        return Err(Error::InvalidArgument(format!(
            "{} is not a stream id (from StreamStarted)",
            crate::error::quote(stream)
        )));
    };
    let payload = serde_json::to_vec(&call).expect("calls serialize");
    relay.bus.ensure_connected()?;
    let request = relay.bus.client.request(subject(replica), payload.into());
    let reply = match tokio::time::timeout(crate::bus::NATS_TIMEOUT, request).await {
        Ok(Ok(reply)) => reply,
        // The replica is gone: so is its stream.
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            return Err(crate::streams::not_open(stream));
        }
        Ok(Err(e)) => return Err(Error::unavailable("relay routing", e)),
        Err(_) => return Err(Error::unavailable("relay routing", format!("replica {replica} did not answer"))),
    };
    match serde_json::from_slice::<Answer>(&reply.payload) {
        Ok(Answer::Ok(n)) => Ok(n),
        Ok(Answer::Err { code, message }) => Err(Error::from_status(tonic::Code::from(code), message)),
        Err(e) => Err(Error::unavailable("relay routing", format!("bad answer from replica {replica}: {e}"))),
    }
}

/// Routed calls served at once; more are answered UNAVAILABLE at once.
const MAX_IN_FLIGHT: usize = 1024;

/// Serves calls routed to this replica until the subscription ends.
pub async fn serve(relay: Arc<Relay>) {
    let mut sub = match relay.bus.client.subscribe(subject(&relay.streams.replica)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot take routed calls; Ack and RefreshToken work only on the stream's own replica");
            return;
        }
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply else { continue };
        let relay = relay.clone();
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let busy = Answer::Err {
                code: tonic::Code::Unavailable as i32,
                message: "the stream's relay is busy; retry".into(),
            };
            let _ = relay.bus.client.publish(reply, serde_json::to_vec(&busy).expect("answers serialize").into()).await;
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let answer = match serde_json::from_slice::<Call>(&msg.payload) {
                Ok(call) => match handle(&relay, call).await {
                    Ok(n) => Answer::Ok(n),
                    Err(e) => {
                        let status = tonic::Status::from(e);
                        Answer::Err { code: status.code() as i32, message: status.message().to_owned() }
                    }
                },
                Err(e) => Answer::Err { code: tonic::Code::InvalidArgument as i32, message: format!("bad call: {e}") },
            };
            let payload = serde_json::to_vec(&answer).expect("answers serialize");
            let _ = relay.bus.client.publish(reply, payload.into()).await;
        });
    }
}

/// Runs a call about a stream of this replica.
async fn handle(relay: &Relay, call: Call) -> Result<u64> {
    match call {
        Call::Ack { stream, user, channel, epoch, seqs } => {
            let s = relay.streams.get(&stream, &user)?;
            let lane = s.lane(&channel).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "stream {stream} has no queue lane for {channel:?}: only queue channels are acked"
                ))
            })?;
            Ok(u64::from(lane.ack(&epoch, &seqs).await?))
        }
        Call::Refresh { stream, user, token, expires } => {
            relay.streams.get(&stream, &user)?.refresh(&token, expires);
            Ok(expires.max(0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip_as_json() {
        let call = Call::Ack {
            stream: "abc-1".into(),
            user: "u".into(),
            channel: "jobs".into(),
            epoch: String::new(),
            seqs: vec![1, 2],
        };
        let json = serde_json::to_string(&call).unwrap();
        assert!(json.contains(r#""op":"ack""#), "{json}");
        assert!(matches!(serde_json::from_str::<Call>(&json).unwrap(), Call::Ack { seqs, .. } if seqs == [1, 2]));
        let answer: Answer = serde_json::from_str(r#"{"err":{"code":5,"message":"gone"}}"#).unwrap();
        assert!(matches!(answer, Answer::Err { code: 5, .. }));
    }
}
