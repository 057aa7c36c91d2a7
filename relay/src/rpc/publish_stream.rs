//! PublishStream: many publishes over one call, for services publishing at a high rate. One
//! HTTP/2 stream carries them all, so the per-call cost of a unary Publish (a stream opened and
//! closed, headers and trailers encoded and parsed, a task per call) is paid once.
//!
//! Each request goes through exactly what Publish does ([`super::publish::publish_as`]): access,
//! validation, rate limit, the Redis append and the NATS publish, each in a task of its own so
//! that none waits on the client. At most [`IN_FLIGHT`] requests (and [`IN_FLIGHT_BYTES`] of
//! text) are taken at once per call, answered or not yet; past that the relay stops reading the
//! request stream, so HTTP/2 flow control slows the client down instead of the relay buffering
//! for it. Answers go out as publishes complete, each with its request's `ref`; a client that
//! leaves them unread for [`SLOW_READER`] is cut off (RESOURCE_EXHAUSTED).
//!
//! The call is held to its token as a Subscribe stream is: verified again at the earlier of its
//! `exp` and `--auth-cache-ttl` (RefreshToken under the call's stream id swaps it), ending with
//! UNAUTHENTICATED when it no longer holds. Shutdown ends it with UNAVAILABLE after the answers to
//! what it had already taken.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::{Request, Status, Streaming};
use tracing::Instrument;

use crate::Relay;
use crate::auth::User;
use crate::error::{Error, Result};
use crate::proto::{
    PublishError, PublishStreamRequest, PublishStreamResponse, PublishStreamStarted, publish_stream_response,
};
use crate::streams::Stream;

/// Requests one call holds at once, running or answered but not yet sent.
pub const IN_FLIGHT: usize = 256;
/// Text bytes one call holds at once (a request is always taken when none is held).
pub const IN_FLIGHT_BYTES: usize = 4 * 1024 * 1024;
/// How long answers may wait for a client that does not read them.
pub const SLOW_READER: Duration = Duration::from_secs(10);
/// How long a check that could not be made (PocketBase unreachable) waits to be tried again.
const RECHECK_RETRY: Duration = Duration::from_secs(5);

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
    // Every publish of the call is a span in the client's trace, if it sent one.
    let parent = crate::telemetry::parent(req.metadata());
    let stream = relay.streams.open(&caller.user.id, &caller.token, caller.expires)?;
    let started = PublishStreamStarted { stream_id: stream.id.clone(), token_expires: caller.expires };
    let started = PublishStreamResponse { r#ref: 0, result: Some(publish_stream_response::Result::Started(started)) };
    // Room for every answer a call may hold, its first response and its final status.
    let (tx, rx) = mpsc::channel(IN_FLIGHT + 2);
    tx.try_send(Ok(started)).expect("room for the first response");
    crate::metrics::streams().inc();
    tokio::spawn(async move {
        let code = run(&relay, &stream, caller.user, parent, req.into_inner(), &tx).await;
        crate::metrics::streams().dec();
        crate::metrics::rpc("PublishStream", code);
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

type Answer = std::result::Result<PublishStreamResponse, Status>;

/// Serves one call until it ends; returns how it ended.
async fn run(
    relay: &Arc<Relay>,
    stream: &Stream,
    user: User,
    parent: Option<opentelemetry::Context>,
    mut requests: Streaming<PublishStreamRequest>,
    tx: &mpsc::Sender<Answer>,
) -> tonic::Code {
    let mut running: JoinSet<(usize, PublishStreamResponse)> = JoinSet::new();
    // Answers not yet handed to the response stream.
    let mut ready: VecDeque<PublishStreamResponse> = VecDeque::new();
    let mut held_bytes = 0usize;
    let mut reading = true;
    let mut token_check = super::subscribe::next_token_check(relay, stream);
    // Since when answers wait for a client that reads none.
    let mut stalled_since: Option<Instant> = None;
    let ending: Option<Status> = loop {
        let held = running.len() + ready.len();
        if !reading && held == 0 {
            break None;
        }
        if ready.is_empty() || tx.capacity() > 0 {
            stalled_since = None;
        } else {
            stalled_since.get_or_insert_with(Instant::now);
        }
        let room = held < IN_FLIGHT && (held_bytes < IN_FLIGHT_BYTES || held == 0);
        tokio::select! {
            biased;
            _ = relay.shutdown.cancelled(), if reading => {
                // Take nothing more; answer what was taken, then end.
                reading = false;
            }
            Some(done) = running.join_next() => {
                if let Ok((bytes, answer)) = done {
                    held_bytes -= bytes;
                    ready.push_back(answer);
                }
            }
            permit = tx.reserve(), if !ready.is_empty() => match permit {
                Ok(permit) => permit.send(Ok(ready.pop_front().expect("not empty"))),
                // The client is gone; what runs finishes in its own tasks.
                Err(_) => return tonic::Code::Cancelled,
            },
            _ = tokio::time::sleep_until(stalled_since.unwrap_or_else(Instant::now) + SLOW_READER), if stalled_since.is_some() => {
                break Some(Error::ResourceExhausted(format!(
                    "answers unread for {SLOW_READER:?}: read the response stream as fast as you publish"
                )).into());
            }
            _ = stream.refreshed.notified() => {
                token_check = super::subscribe::next_token_check(relay, stream);
            }
            _ = tokio::time::sleep_until(token_check) => match relay.verifier.verify(&stream.token(), None).await {
                Ok(checked) if checked.id == stream.user => {
                    token_check = super::subscribe::next_token_check(relay, stream);
                }
                Ok(_) => break Some(Error::Unauthenticated("the call's token now names another user".into()).into()),
                Err(Error::Unauthenticated(why)) => break Some(Error::Unauthenticated(format!(
                    "call ended: {why} (refresh the token with RefreshToken before it expires)"
                )).into()),
                Err(_) => token_check = Instant::now() + RECHECK_RETRY,
            },
            next = requests.message(), if reading && room => match next {
                Ok(Some(request)) => {
                    let bytes = request.publish.as_ref().map_or(0, |p| p.text.len());
                    held_bytes += bytes;
                    let (relay, user) = (relay.clone(), user.clone());
                    let span = crate::telemetry::call_span("relay.publish", parent.as_ref());
                    running.spawn(async move { (bytes, one(&relay, user, request).await) }.instrument(span));
                }
                // The client has sent everything.
                Ok(None) => reading = false,
                // A request the server could not decode (too large, malformed), or the client went away.
                Err(status) => break Some(status),
            },
        }
    };
    let Some(status) = ending else { return tonic::Code::Ok };
    let code = status.code();
    // The status goes after what is ready, if the client reads; it does not wait for the rest.
    for answer in ready {
        if tx.try_send(Ok(answer)).is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(SLOW_READER, tx.send(Err(status))).await;
    code
}

/// One request, run to its answer.
async fn one(relay: &Relay, user: User, request: PublishStreamRequest) -> PublishStreamResponse {
    let started = std::time::Instant::now();
    let Some(publish) = request.publish else {
        return refused(request.r#ref, Error::InvalidArgument("publish is missing".into()));
    };
    match super::publish::publish_as(relay, user, publish).await {
        Ok(message) => {
            crate::metrics::observe_publish(started.elapsed());
            crate::metrics::rpc("PublishStream.Publish", tonic::Code::Ok);
            // The client has the text it sent: the answer leaves it out.
            let message = crate::proto::Message { text: String::new(), ..message.into() };
            PublishStreamResponse {
                r#ref: request.r#ref,
                result: Some(publish_stream_response::Result::Message(message)),
            }
        }
        Err(e) => refused(request.r#ref, e),
    }
}

fn refused(r#ref: u64, e: Error) -> PublishStreamResponse {
    let status = Status::from(e);
    crate::metrics::rpc("PublishStream.Publish", status.code());
    PublishStreamResponse {
        r#ref,
        result: Some(publish_stream_response::Result::Error(PublishError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        })),
    }
}
