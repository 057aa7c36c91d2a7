//! A queue channel's live messages: pulled from its JetStream consumer as the client acks them.

use crate::error::Result;
use crate::queue::{Lane, Pulled};
use crate::rpc::outbox::Outbox;

use super::event;
use crate::proto::subscribe_response::Event;

/// Sends what the lane pulls, marked `needs_ack`, until the stream ends.
pub async fn run(lane: &Lane, outbox: &Outbox) -> Result<()> {
    lane.run(|Pulled { message, redelivered }| {
        let mut m: crate::proto::Message = message.into();
        m.redelivered = redelivered;
        m.needs_ack = true;
        let outbox = outbox.clone();
        async move { outbox.send(event(Event::Message(m))).await.is_ok() }
    })
    .await
}
