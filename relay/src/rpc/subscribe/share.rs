//! perUser and core-queue channels: this stream's share of a NATS queue group, de-duplicated and
//! put in order where messages arrive close together ([`Share`]). After a NATS reconnect the
//! stream reads what it may have missed from history.

use std::time::Duration;

use futures::StreamExt;
use relay_channel::WireMessage;
use tokio::time::Instant;

use crate::Relay;
use crate::error::{Error, Result};
use crate::order::{Out, Share};
use crate::rpc::outbox::Outbox;
use crate::store::{After, MAX_REPAIR, Read};

use super::{marker, message, offer};

/// Forwards this stream's share after (`epoch`, `last`) until the stream ends.
pub async fn run(
    relay: &Relay,
    ch: &str,
    epoch: &str,
    last: u64,
    mut sub: async_nats::Subscriber,
    outbox: &Outbox,
) -> Result<()> {
    let mut share = Share::after(epoch, last);
    let mut reconnected = relay.reconnected.subscribe();
    let done = outbox.done();
    tokio::pin!(done);
    loop {
        let deadline = share.deadline();
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let out = tokio::select! {
            _ = &mut done => return Ok(()),
            msg = sub.next() => {
                let msg = msg.ok_or_else(|| Error::unavailable("nats", "subscription closed"))?;
                match WireMessage::from_json(&msg.payload) {
                    Ok(m) if m.channelid == ch => {
                        crate::telemetry::delivery_span(msg.headers.as_ref(), &m.channelid, m.seq)
                            .in_scope(|| tracing::debug!("delivering to a perUser stream"));
                        share.push(m, Instant::now())
                    }
                    _ => {
                        crate::metrics::dropped("not_a_relay_message");
                        continue;
                    }
                }
            }
            _ = expired => share.expire(Instant::now()),
            _ = reconnected.recv() => Box::pin(catch_up(relay, ch, &mut share)).await?,
        };
        for o in out {
            match o {
                Out::Message(m) => offer(outbox, message(m))?,
                Out::Marker(mk) => offer(outbox, marker(ch, &mk))?,
            }
        }
    }
}

/// Reads what was published after the share's last message while NATS was away.
async fn catch_up(relay: &Relay, ch: &str, share: &mut Share) -> Result<Vec<Out>> {
    relay.bus.confirm().await?;
    let (_, last) = share.position();
    let page = relay.store.read(ch, Read::After(After::Seq(last)), MAX_REPAIR, Duration::ZERO).await?;
    let now = Instant::now();
    let mut out = Vec::new();
    for m in page.messages {
        out.extend(share.push(m, now));
    }
    Ok(out)
}
