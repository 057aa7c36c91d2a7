//! A channel's live-only events on a stream: Join, Leave and PresenceChanged where the channel has
//! `presence.joinLeave`, ephemeral messages where it allows them. Best effort, like the events
//! themselves: a stream that falls behind on them (or whose queue is full) skips them rather than
//! ending.

use std::sync::Arc;

use relay_channel::LiveEvent;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::live::{Item, Topic};
use crate::proto::{Join, Leave, PresenceChanged, subscribe_response::Event};
use crate::rpc::outbox::Outbox;

use super::event;

/// A stream's watch on its channel's live topic.
pub struct Side {
    pub _topic: Arc<Topic>,
    pub rx: broadcast::Receiver<Arc<Item>>,
    pub join_leave: bool,
}

/// Forwards the channel's live events until the stream ends.
pub async fn run(ch: &str, mut side: Side, outbox: &Outbox) -> Result<()> {
    let done = outbox.done();
    tokio::pin!(done);
    loop {
        let item = tokio::select! {
            biased;
            item = side.rx.recv() => item,
            _ = &mut done => return Ok(()),
        };
        let item = match item {
            Ok(item) => item,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(channel = %ch, skipped = n, "a stream fell behind on live events");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return Err(Error::unavailable("hub", "live topic closed")),
        };
        let e = match (item.as_ref(), side.join_leave) {
            (Item::Event(LiveEvent::Ephemeral(m)), _) => Event::Ephemeral(m.into()),
            (Item::Event(LiveEvent::Join { channelid, userid, username }), true) => {
                Event::Join(Join { channelid: channelid.clone(), userid: userid.clone(), username: username.clone() })
            }
            (Item::Event(LiveEvent::Leave { channelid, userid, username }), true) => {
                Event::Leave(Leave { channelid: channelid.clone(), userid: userid.clone(), username: username.clone() })
            }
            (Item::Changed { joined, left }, true) => {
                Event::PresenceChanged(PresenceChanged { channelid: ch.to_owned(), joined: *joined, left: *left })
            }
            _ => continue,
        };
        if outbox.offer_or_skip(event(e)).is_err() {
            return Ok(());
        }
    }
}
