//! Group commit: the appends to one channel that wait while a script call for that channel is on
//! its way go together in the next call, in the order they came. With `--redis-wait-replicas` one
//! WAIT and one durable mark serve the whole batch.
//!
//! A channel with no call in flight has its append sent at once, so a lone publish waits for
//! nothing. Under load each round trip carries everything that queued during the previous one:
//! Redis runs one script per batch instead of one per message (it was a third of the CPU of a busy
//! channel), and seq/ts stay strictly increasing because the script assigns them in turn.
//!
//! Bounded everywhere: a batch holds at most [`MAX_BATCH`] messages and about [`MAX_BATCH_BYTES`]
//! of text, a channel's queue at most [`MAX_WAITING`] appends (past that, RESOURCE_EXHAUSTED), and
//! an append that waited longer than the Redis deadline is answered UNAVAILABLE without being sent
//! (so it is not stored). Each channel with appends waiting has one flusher task; it leaves when its
//! queue is empty, and if it ever dies, its waiters are answered, not left hanging.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Appended, REDIS_TIMEOUT, Store};
use crate::error::{Error, Result};

/// The most messages one script call appends.
pub const MAX_BATCH: usize = 128;
/// A batch stops growing once its texts add up to this (a larger message goes alone).
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The most appends waiting for one channel on this relay.
const MAX_WAITING: usize = 10_000;

/// One append, owned: it waits in a queue.
pub struct Job {
    pub channel: String,
    pub userid: String,
    pub username: String,
    pub text: String,
    pub id: String,
    pub idempotency_key: Option<String>,
    pub limits: Limits,
    since: Instant,
    done: oneshot::Sender<Result<Appended>>,
}

/// What the script applies to a whole batch: only appends that agree on it go together.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    pub max_messages: u64,
    pub max_age_secs: u64,
    pub idle_ttl_secs: Option<u64>,
}

/// The queues of the channels with appends waiting or in flight.
#[derive(Default)]
pub struct Batches {
    queues: Mutex<HashMap<String, Queue>>,
    next_flusher: AtomicU64,
}

struct Queue {
    /// Which flusher serves the queue (a dying flusher clears only its own).
    flusher: u64,
    jobs: VecDeque<Job>,
}

impl Job {
    pub fn new(a: &super::Append<'_>) -> (Self, oneshot::Receiver<Result<Appended>>) {
        let (done, answer) = oneshot::channel();
        let job = Self {
            channel: a.channel.to_owned(),
            userid: a.userid.to_owned(),
            username: a.username.to_owned(),
            text: a.text.to_owned(),
            id: a.id.to_owned(),
            idempotency_key: a.idempotency_key.map(str::to_owned),
            limits: Limits {
                max_messages: a.max_messages,
                max_age_secs: a.max_age_secs,
                idle_ttl_secs: a.idle_ttl_secs,
            },
            since: Instant::now(),
            done,
        };
        (job, answer)
    }
}

impl Batches {
    /// Queues `job`; returns the id of the flusher to start when the channel had none.
    fn push(&self, job: Job) -> Result<Option<u64>> {
        let mut queues = lock(&self.queues);
        if let Some(q) = queues.get_mut(&job.channel) {
            if q.jobs.len() >= MAX_WAITING {
                return Err(Error::ResourceExhausted(format!(
                    "channel {} has {MAX_WAITING} publishes waiting on this relay; retry later",
                    job.channel
                )));
            }
            q.jobs.push_back(job);
            return Ok(None);
        }
        let flusher = self.next_flusher.fetch_add(1, Ordering::Relaxed);
        let channel = job.channel.clone();
        queues.insert(channel, Queue { flusher, jobs: VecDeque::from([job]) });
        Ok(Some(flusher))
    }

    /// The next batch for `channel`, or None (and the queue is gone) when nothing waits.
    fn next(&self, channel: &str) -> Option<Vec<Job>> {
        let mut queues = lock(&self.queues);
        let q = queues.get_mut(channel)?;
        let Some(first) = q.jobs.front() else {
            queues.remove(channel);
            return None;
        };
        let limits = first.limits;
        let mut bytes = 0;
        let mut batch = Vec::new();
        while let Some(job) = q.jobs.front()
            && job.limits == limits
            && batch.len() < MAX_BATCH
            && (batch.is_empty() || bytes + job.text.len() <= MAX_BATCH_BYTES)
        {
            bytes += job.text.len();
            batch.extend(q.jobs.pop_front());
        }
        Some(batch)
    }
}

/// The queues, whatever a panic elsewhere left (a poisoned lock must not take down every later
/// publish, nor abort the process from [`Leave`]'s drop while unwinding).
fn lock(queues: &Mutex<HashMap<String, Queue>>) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
    queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes a flusher's queue if it ends without emptying it (a panic): its waiters are answered
/// (their senders dropped) instead of waiting for a flusher that is gone.
struct Leave<'a> {
    batches: &'a Batches,
    channel: &'a str,
    flusher: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut queues = lock(&self.batches.queues);
        if queues.get(self.channel).is_some_and(|q| q.flusher == self.flusher) {
            queues.remove(self.channel);
        }
    }
}

impl Store {
    /// Queues an append and waits for its answer; starts the channel's flusher when it has none.
    pub(super) async fn submit(&self, job: Job, answer: oneshot::Receiver<Result<Appended>>) -> Result<Appended> {
        let channel = job.channel.clone();
        if let Some(flusher) = self.batches.push(job)? {
            let store = self.clone();
            tokio::spawn(async move { store.flush(&channel, flusher).await });
        }
        answer.await.map_err(|_| Error::unavailable("redis", "the append was abandoned (it may have been stored)"))?
    }

    /// Sends the channel's batches, one script call at a time, until its queue is empty.
    async fn flush(&self, channel: &str, flusher: u64) {
        let _leave = Leave { batches: &self.batches, channel, flusher };
        while let Some(batch) = self.batches.next(channel) {
            // Past the deadline already: answered without being sent, so certainly not stored.
            let (late, batch): (Vec<Job>, Vec<Job>) =
                batch.into_iter().partition(|j| j.since.elapsed() > REDIS_TIMEOUT);
            for job in late {
                let _ = job.done.send(Err(Error::unavailable(
                    "redis",
                    format!("not stored: waited more than {REDIS_TIMEOUT:?} behind other publishes to the channel"),
                )));
            }
            if batch.is_empty() {
                continue;
            }
            crate::metrics::append_batch(batch.len());
            match self.append_batch(&batch).await {
                Ok(results) => {
                    for (job, result) in batch.into_iter().zip(results) {
                        let _ = job.done.send(result);
                    }
                }
                Err(e) => {
                    for job in batch {
                        let _ = job.done.send(Err(e.to_owned_error()));
                    }
                }
            }
        }
    }
}
