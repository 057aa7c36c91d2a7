//! The bounded queue between a Subscribe stream's producers (one task per channel, heartbeats) and
//! tonic, which writes to the client.
//!
//! History is sent with backpressure ([`Outbox::send`] waits for room), in at most half the queue:
//! one channel's history never leaves another channel's live messages without room. Live messages
//! are offered ([`Outbox::offer`]): when the queue is full the client is not keeping up, and the
//! stream ends with RESOURCE_EXHAUSTED rather than growing memory; the client resumes from its last
//! `seq`. An ending status jumps the queue, so a client that cannot drain still learns why it was
//! cut off.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Status;

use crate::proto::SubscribeResponse;

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

/// An event, and the share of the queue it holds when it was sent with backpressure. Boxed: the
/// queue allocates its slots 32 at a time, and an idle stream's first block of 24-byte slots costs
/// under 1 KiB where unboxed events (about 200 bytes each) cost 6 KiB.
type Item = (Box<SubscribeResponse>, Option<OwnedSemaphorePermit>);

/// The stream is gone (client left or it was ended): producers stop.
#[derive(Debug)]
pub struct Closed;

/// Producers' end of a stream's queue; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Item>,
    end: Arc<End>,
    /// Set on every message; the heartbeat clears it and only beats when it was already clear.
    busy: Arc<AtomicBool>,
    /// The part of the queue that waiting senders may fill.
    patient: Arc<Semaphore>,
}

struct End {
    status: Mutex<Option<Status>>,
    /// Cancelled when the stream ends for any reason, including the client leaving.
    done: CancellationToken,
}

impl Outbox {
    /// A queue of `capacity` events and the stream tonic writes from. Dropping the stream (the
    /// client left) cancels [`Outbox::done`].
    pub fn new(capacity: usize) -> (Self, ResponseStream) {
        let (tx, rx) = mpsc::channel(capacity);
        let end = Arc::new(End { status: Mutex::new(None), done: CancellationToken::new() });
        let patient = Arc::new(Semaphore::new((capacity / 2).max(1)));
        let outbox = Self { tx, end: end.clone(), busy: Arc::new(AtomicBool::new(false)), patient };
        let guard = end.done.clone().drop_guard();
        (outbox, Box::pin(drain(rx, end, guard)))
    }

    /// Waits for room: for history, which the server produces at the client's pace.
    pub async fn send(&self, event: SubscribeResponse) -> Result<(), Closed> {
        self.busy.store(true, Ordering::Relaxed);
        tokio::select! {
            r = async {
                let permit = self.patient.clone().acquire_owned().await.map_err(|_| Closed)?;
                self.tx.send((Box::new(event), Some(permit))).await.map_err(|_| Closed)
            } => r,
            _ = self.end.done.cancelled() => Err(Closed),
        }
    }

    /// Queues without waiting: for live messages. A full queue ends the stream as a slow consumer.
    pub fn offer(&self, event: SubscribeResponse) -> Result<(), Closed> {
        self.busy.store(true, Ordering::Relaxed);
        match self.tx.try_send((Box::new(event), None)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::metrics::dropped("slow_consumer");
                self.end(Status::resource_exhausted(
                    "slow consumer: the stream fell too far behind; resubscribe from your last seq",
                ));
                Err(Closed)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// Queues a live-only event (join, leave, ephemeral) without waiting; a full queue drops it
    /// (they are best effort) rather than ending the stream. Err only when the stream has ended.
    pub fn offer_or_skip(&self, event: SubscribeResponse) -> Result<(), Closed> {
        match self.tx.try_send((Box::new(event), None)) {
            Ok(()) => {
                self.busy.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::metrics::dropped("live_event_skipped");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// Ends the stream with `status` (the first ending wins).
    pub fn end(&self, status: Status) {
        self.end.status.lock().expect("outbox lock").get_or_insert(status);
        self.end.done.cancel();
    }

    /// Resolves when the stream has ended.
    pub fn done(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.end.done.cancelled()
    }

    /// Whether anything was queued since the last call.
    pub fn take_busy(&self) -> bool {
        self.busy.swap(false, Ordering::Relaxed)
    }
}

struct Drain {
    rx: mpsc::Receiver<Item>,
    end: Arc<End>,
    finished: bool,
    _guard: DropGuard,
}

fn drain(
    rx: mpsc::Receiver<Item>,
    end: Arc<End>,
    guard: DropGuard,
) -> impl Stream<Item = Result<SubscribeResponse, Status>> + Send {
    let state = Drain { rx, end, finished: false, _guard: guard };
    futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let item = tokio::select! {
            biased;
            _ = st.end.done.cancelled() => None,
            item = st.rx.recv() => item,
        };
        match item {
            // The permit, if any, goes with the event: its room is free again.
            Some((event, permit)) => {
                if let Some(crate::proto::subscribe_response::Event::Message(m)) = &event.event {
                    // Latency only for live broadcast and perUser messages: history pages (sent
                    // with a permit) and queue messages (which wait for a worker) are old by design.
                    let live = permit.is_none() && !m.needs_ack;
                    crate::metrics::delivered(live.then_some(m.ts));
                }
                Some((Ok(*event), st))
            }
            None => {
                st.finished = true;
                let status = st.end.status.lock().expect("outbox lock").take();
                status.map(|s| (Err(s), st))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Heartbeat, subscribe_response::Event};
    use futures::StreamExt;

    fn beat(ts: i64) -> SubscribeResponse {
        SubscribeResponse { event: Some(Event::Heartbeat(Heartbeat { ts })) }
    }

    #[tokio::test]
    async fn a_full_queue_ends_the_stream_as_a_slow_consumer() {
        let (outbox, mut stream) = Outbox::new(2);
        outbox.offer(beat(1)).unwrap();
        outbox.offer(beat(2)).unwrap();
        assert!(outbox.offer(beat(3)).is_err());
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_producers() {
        let (outbox, stream) = Outbox::new(1);
        outbox.offer(beat(1)).unwrap();
        drop(stream);
        assert!(outbox.send(beat(2)).await.is_err());
        outbox.done().await;
    }

    #[tokio::test]
    async fn history_never_takes_the_room_live_messages_need() {
        let (outbox, mut stream) = Outbox::new(4);
        outbox.send(beat(1)).await.unwrap();
        outbox.send(beat(2)).await.unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(beat(3)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "history waits once it holds half the queue");
        outbox.offer(beat(10)).unwrap();
        outbox.offer(beat(11)).unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), beat(1));
        waiting.await.unwrap().unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(stream.next().await.unwrap().unwrap());
        }
        assert_eq!(got, [beat(2), beat(10), beat(11), beat(3)]);
    }

    #[tokio::test]
    async fn events_flow_in_order_then_the_ending_status() {
        let (outbox, mut stream) = Outbox::new(8);
        outbox.send(beat(1)).await.unwrap();
        outbox.offer(beat(2)).unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first, beat(1));
        assert_eq!(stream.next().await.unwrap().unwrap(), beat(2));
        outbox.end(Status::unavailable("bye"));
        assert_eq!(stream.next().await.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
    }
}
