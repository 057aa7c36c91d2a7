//! What a stream sends before live messages: the channel's Recovery marker, then its history after
//! the client's cursor.

use std::time::Duration;

use crate::Relay;
use crate::error::Result;
use crate::order::reason;
use crate::rpc::Resume;
use crate::rpc::outbox::Outbox;
use crate::store::{After, Read};

use super::{emit, message, recovery};

/// History is sent in pages of this many messages.
const PAGE: usize = 500;
/// How often history may start over because its epoch changed while it was being sent.
const MAX_RESTARTS: usize = 3;

/// Sends the recovery marker and the history after `resume`; returns the epoch and the seq the
/// live path continues after.
pub async fn send(
    relay: &Relay,
    ch: &str,
    resume: Option<&Resume>,
    max_age: Duration,
    outbox: &Outbox,
) -> Result<(String, u64)> {
    let Some(resume) = resume else {
        // Live only: where the channel stands now.
        let page = relay.store.read(ch, Read::Latest, 0, Duration::ZERO).await?;
        emit(outbox, recovery(ch, true, &page.epoch, "")).await?;
        return Ok((page.epoch, page.last_seq));
    };
    let mut page = relay.store.read(ch, Read::After(resume.after), PAGE, max_age).await?;
    let recovered = page.covers(resume.after, &resume.epoch);
    let mut why = "";
    // What the client already has: live goes on after it even when replicas have not yet confirmed
    // that far (what may be read then ends before the cursor).
    let mut floor = match resume.after {
        After::Seq(s) => s,
        After::Ts(_) => 0,
    };
    if !recovered {
        why = reason::EXPIRED;
        if page.lost_since(resume.after, &resume.epoch) {
            floor = 0;
            // The cursor's position means nothing in this epoch: start from its beginning.
            why = "the channel's history was lost since the cursor (new epoch)";
            page = relay.store.read(ch, Read::After(After::Seq(0)), PAGE, max_age).await?;
        }
    }
    emit(outbox, recovery(ch, recovered, &page.epoch, why)).await?;
    let mut restarts = 0;
    let (mut epoch, mut base, mut last) = (page.epoch.clone(), page.last_seq, 0);
    loop {
        for m in page.messages.drain(..) {
            last = m.seq;
            emit(outbox, message(m)).await?;
        }
        if !page.more {
            // Every message up to `base` was in Redis when the first page was read: it was sent,
            // or it is older than the cursor, or retention dropped it. Live goes on after it.
            return Ok((epoch, last.max(base).max(floor)));
        }
        page = relay.store.read(ch, Read::After(After::Seq(last)), PAGE, max_age).await?;
        if page.epoch != epoch && restarts < MAX_RESTARTS {
            // The history was lost while it was being sent: say so and start the new one.
            restarts += 1;
            emit(outbox, recovery(ch, false, &page.epoch, reason::NEW_EPOCH)).await?;
            page = relay.store.read(ch, Read::After(After::Seq(0)), PAGE, max_age).await?;
            (epoch, base, last, floor) = (page.epoch.clone(), page.last_seq, 0, 0);
        }
    }
}
