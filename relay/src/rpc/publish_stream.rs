//! PublishStream: many publishes over one call, for services publishing at a high rate. One
//! HTTP/2 stream carries them all, so the per-call cost of a unary Publish (a stream opened and
//! closed, headers and trailers encoded and parsed, a task per call) is paid once.
//!
//! Each request goes through exactly what Publish does ([`super::publish::publish_as`]): access,
//! validation, rate limit, the Redis append and the NATS publish. At most [`IN_FLIGHT`] run at
//! once per call; past that the relay stops reading the request stream, so HTTP/2 flow control
//! slows the client down instead of the relay buffering for it. Answers go out as publishes
//! complete, each with its request's `ref`.
//!
//! The call's token is checked again for every request (a cache hit as long as the auth TTL
//! lasts, so a deleted user or an expired token ends the call within that TTL) and can be swapped
//! with RefreshToken under the call's stream id. An auth failure, or the relay shutting down, ends
//! the call after the answers to what it had already taken.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tonic::{Request, Status, Streaming};

use crate::Relay;
use crate::error::{Error, Result};
use crate::proto::{
    PublishError, PublishStreamRequest, PublishStreamResponse, PublishStreamStarted, publish_stream_response,
};
use crate::streams::Stream;

/// Publishes one call runs at once.
pub const IN_FLIGHT: usize = 256;

pub type ResponseStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::result::Result<PublishStreamResponse, Status>> + Send>>;

pub async fn publish_stream(
    relay: Arc<Relay>,
    req: Request<Streaming<PublishStreamRequest>>,
) -> Result<ResponseStream> {
    if relay.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    let caller = relay.authenticate(&req).await?;
    let stream = relay.streams.open(&caller.user.id, &caller.token, caller.expires)?;
    let started = PublishStreamResponse {
        r#ref: 0,
        result: Some(publish_stream_response::Result::Started(PublishStreamStarted { stream_id: stream.id.clone() })),
    };
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    tx.try_send(Ok(started)).expect("room for the first response");
    tokio::spawn(run(relay, stream, req.into_inner(), tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

type Answer = std::result::Result<PublishStreamResponse, Status>;

async fn run(
    relay: Arc<Relay>,
    stream: Arc<Stream>,
    mut requests: Streaming<PublishStreamRequest>,
    tx: mpsc::Sender<Answer>,
) {
    let mut pending = FuturesUnordered::new();
    // Why the call ends early, if it does.
    let mut ending: Option<Error> = None;
    loop {
        tokio::select! {
            // Answers first: they make room for more requests.
            biased;
            Some(answer) = pending.next() => {
                let answer: std::result::Result<PublishStreamResponse, Error> = answer;
                match answer {
                    Ok(response) => {
                        if tx.send(Ok(response)).await.is_err() {
                            return; // the client is gone; what is pending finishes in its own tasks
                        }
                    }
                    Err(e) => {
                        ending.get_or_insert(e);
                        break;
                    }
                }
            }
            _ = relay.shutdown.cancelled() => {
                ending = Some(Error::ShuttingDown);
                break;
            }
            next = requests.message(), if pending.len() < IN_FLIGHT => match next {
                Ok(Some(request)) => pending.push(one(relay.clone(), stream.clone(), request)),
                // The client has sent everything, or went away.
                Ok(None) | Err(_) => break,
            },
        }
    }
    // Whatever was taken is answered (an auth failure of one request does not undo the others).
    while let Some(answer) = pending.next().await {
        match answer {
            Ok(response) => {
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                ending.get_or_insert(e);
            }
        }
    }
    if let Some(e) = ending {
        let status = Status::from(e);
        crate::metrics::rpc("PublishStream", status.code());
        let _ = tx.send(Err(status)).await;
    } else {
        crate::metrics::rpc("PublishStream", tonic::Code::Ok);
    }
}

/// One request: its answer, or the error that ends the call (the token no longer holds).
async fn one(
    relay: Arc<Relay>,
    stream: Arc<Stream>,
    request: PublishStreamRequest,
) -> std::result::Result<PublishStreamResponse, Error> {
    let started = std::time::Instant::now();
    let user = match relay.verifier.verify(&stream.token(), None).await {
        Ok(user) => user,
        // The token is refused or expired: the call is over.
        Err(e @ Error::Unauthenticated(_)) => return Err(e),
        Err(e) => return Ok(refused(request.r#ref, e)),
    };
    let Some(publish) = request.publish else {
        return Ok(refused(request.r#ref, Error::InvalidArgument("publish is missing".into())));
    };
    let result = match super::publish::publish_as(&relay, user, publish).await {
        Ok(message) => {
            crate::metrics::observe_publish(started.elapsed());
            publish_stream_response::Result::Message(message.into())
        }
        Err(e) => return Ok(refused(request.r#ref, e)),
    };
    Ok(PublishStreamResponse { r#ref: request.r#ref, result: Some(result) })
}

fn refused(r#ref: u64, e: Error) -> PublishStreamResponse {
    let status = Status::from(e);
    PublishStreamResponse {
        r#ref,
        result: Some(publish_stream_response::Result::Error(PublishError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        })),
    }
}
