//! A broadcast channel's live messages: the replica's topic, in order, joined to what this stream's
//! history read already sent.

use relay_channel::WireMessage;
use tokio::sync::broadcast;

use crate::Relay;
use crate::error::{Error, Result};
use crate::hub::Item;
use crate::order::{Out, Sequencer, Step, reason};
use crate::rpc::outbox::Outbox;

use super::{marker, message, offer, recovery};

/// Forwards the topic's messages after (`epoch`, `last`) until the stream ends.
pub async fn run(
    relay: &Relay,
    ch: &str,
    mut epoch: String,
    last: u64,
    mut rx: broadcast::Receiver<Item>,
    outbox: &Outbox,
) -> Result<()> {
    let mut seq = Sequencer::starting_after(last);
    // After a marker of a gap the hub gave up on: the next newer message follows it directly.
    let mut skipping = false;
    let done = outbox.done();
    tokio::pin!(done);
    loop {
        // Messages first: the end is looked at only when none is waiting (offering to an ended
        // stream fails, which ends this loop too).
        let item = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = &mut done => return Ok(()),
        };
        let item = match item {
            Ok(item) => item,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                return Err(Error::ResourceExhausted(format!(
                    "slow consumer: {n} messages of {ch} were not taken in time; resubscribe from your last seq"
                )));
            }
            Err(broadcast::error::RecvError::Closed) => return Err(Error::unavailable("hub", "topic closed")),
        };
        let m = match item.as_ref() {
            Out::Marker(mk) => {
                offer(outbox, marker(ch, mk))?;
                if mk.epoch != epoch || mk.reason == reason::REWOUND {
                    // Another epoch, or seqs handed out again: the hub goes on from its next message.
                    epoch = mk.epoch.clone();
                    seq = Sequencer::default();
                } else {
                    // A gap in this epoch: what this stream sent stays sent.
                    skipping = true;
                }
                continue;
            }
            Out::Message(m) => m,
        };
        if epoch.is_empty() && seq.last.unwrap_or(0) == 0 {
            epoch = m.epoch.clone();
        }
        match m.epoch.cmp(&epoch) {
            // From before what this stream's history read saw: its history is gone.
            std::cmp::Ordering::Less => {
                offer(outbox, recovery(ch, false, &epoch, reason::STALE_EPOCH))?;
                continue;
            }
            std::cmp::Ordering::Greater => {
                offer(outbox, recovery(ch, false, &m.epoch, reason::NEW_EPOCH))?;
                epoch = m.epoch.clone();
                seq = Sequencer::default();
            }
            std::cmp::Ordering::Equal => {}
        }
        match seq.step(m.seq) {
            Step::Duplicate => continue,
            Step::Next => {}
            Step::Gap { .. } if skipping => {}
            // The moment between this stream's history read and the hub's next message.
            Step::Gap { after } => Box::pin(repair(relay, ch, &epoch, after, m, outbox)).await?,
        }
        skipping = false;
        seq.delivered(m.seq);
        offer(outbox, message(m.clone()))?;
    }
}

/// Sends what history holds between `after` and `m`, or a marker for what it does not.
async fn repair(relay: &Relay, ch: &str, epoch: &str, after: u64, m: &WireMessage, outbox: &Outbox) -> Result<()> {
    let mut next = after + 1;
    // Page by page (a page is bounded in bytes); the gap is the short moment before the hub's
    // next message, so it is small unless messages are large.
    'pages: while next < m.seq {
        let page = relay.store.between(ch, next - 1, m.seq).await?;
        if page.epoch != epoch || page.messages.is_empty() {
            break;
        }
        for found in page.messages {
            if found.seq != next {
                break 'pages;
            }
            next += 1;
            offer(outbox, message(found))?;
        }
    }
    if next < m.seq {
        offer(outbox, recovery(ch, false, epoch, reason::EXPIRED))?;
    }
    Ok(())
}
