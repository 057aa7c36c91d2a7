//! Messages a durable mark vouched for that were never announced: appended while relays wait for
//! Redis replicas (`--redis-wait-replicas`), but not covered by a mark of their own. Their WAIT
//! timed out in a failover, their reply was lost, or their relay died; their publishers were told
//! UNAVAILABLE ("stored, retry with the same key"). Often the new master has them all the same,
//! and once a later batch's mark covers them they must be announced before that batch: a perUser
//! stream that resumed past a later message never sees an earlier one announced after it (the
//! fault checker's Sentinel run found exactly that).
//!
//! `append.lua` records each seq it hands out in the channel's pending set, in the same atomic
//! call, so the record survives whatever the relay does next. `durable.lua` takes the marking
//! batch's own seqs out of it, and hands back every earlier one still there, oldest first, whatever
//! relay appended it. The marking batch announces them before its own messages, once
//! ([`Covered::announce_once`]). When relays publish to a channel at once, a mark often finds
//! another relay's batch whose own mark has not run yet: both announce it, and subscribers drop
//! the copy by seq (JetStream by message id). That costs at most one extra publish per message in
//! that case, which is what never announcing a later message first takes.
//!
//! What is left (a double fault each): a mark whose script ran but whose answer was lost leaves
//! what it took out of the set to the publishers' retries, as does a relay that dies between its
//! mark and the announcement; a mark hands back at most [`MAX_COVERED`], the rest after its batch.

use relay_channel::WireMessage;
use tokio::sync::OnceCell;

/// The most earlier messages one mark hands back; the rest stay pending for the next mark.
pub const MAX_COVERED: usize = 1024;

/// Earlier messages a durable mark vouched for: announced once, before any message of the batch
/// that wrote the mark.
pub struct Covered {
    pub messages: Vec<WireMessage>,
    announced: OnceCell<bool>,
}

impl Covered {
    pub fn new(messages: Vec<WireMessage>) -> Self {
        Self { messages, announced: OnceCell::new() }
    }

    /// Runs `announce` the first time it is called; later callers wait for that one to finish.
    /// Returns what it returned: whether the messages went out.
    pub async fn announce_once<F: Future<Output = bool>>(&self, announce: impl FnOnce() -> F) -> bool {
        *self.announced.get_or_init(announce).await
    }
}
