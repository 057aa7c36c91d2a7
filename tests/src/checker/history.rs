//! What a checker run records: every acknowledged publish, every event every subscriber saw, every
//! fault. The invariants ([`super::check`]) are judged on this alone.

use std::collections::HashSet;
use std::time::Duration;

/// Which delivery a subscriber used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Broadcast,
    PerUser,
    Queue,
}

/// A publish the relay answered OK.
#[derive(Clone, Debug)]
pub struct Published {
    /// The text, which is also the idempotency key: unique per message of a run.
    pub key: String,
    pub channel: String,
    pub epoch: String,
    pub seq: u64,
    pub id: String,
    /// Since the run started.
    pub at: Duration,
}

/// One thing a subscriber saw or did, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A stream opened on `relay` with this cursor (epoch, seq); None: from the start.
    Start {
        relay: usize,
        cursor: Option<(String, u64)>,
    },
    Message {
        epoch: String,
        seq: u64,
        id: String,
        text: String,
        redelivered: u32,
    },
    /// A Recovery event.
    Marker {
        recovered: bool,
        epoch: String,
        reason: String,
    },
    /// The stream ended (or could not open), and why.
    End {
        why: String,
    },
    /// Queue: the worker acked a message; `acked` is the answer (1: it was waiting, 0: it was not),
    /// `sent` when the call went out (the event's own time is when the answer came).
    Acked {
        epoch: String,
        seq: u64,
        acked: Result<u32, String>,
        sent: std::time::Duration,
    },
    /// Queue: the worker dropped its stream while holding this message, without acking it.
    Abandoned {
        epoch: String,
        seq: u64,
    },
}

/// Everything one subscriber (or queue worker) saw.
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub name: String,
    pub mode: Mode,
    pub channel: String,
    pub events: Vec<(Duration, Seen)>,
}

/// A fault the nemesis injected.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: String,
    pub start: Duration,
    pub end: Duration,
}

/// A whole run.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub published: Vec<Published>,
    /// Every text a publisher tried to publish, acknowledged or not.
    pub attempted: HashSet<String>,
    pub subscribers: Vec<Subscriber>,
    pub faults: Vec<Fault>,
}
