//! The bounded queue between a Subscribe stream's producers (one task per channel, heartbeats) and
//! tonic, which writes to the client.
//!
//! History is sent with backpressure ([`Outbox::send`] waits for room), in at most half the queue:
//! one channel's history never leaves another channel's live messages without room. Live messages
//! are offered ([`Outbox::offer`]): when the queue is full the client is not keeping up, and the
//! stream ends with RESOURCE_EXHAUSTED rather than growing memory; the client resumes from its last
//! `seq`. An ending status jumps the queue, so a client that cannot drain still learns why it was
//! cut off.
//!
//! Every live message passes through here once per stream, so the drain is written for that: it
//! takes what is queued with one atomic load per event, and only registers for the stream's end
//! when the queue is empty (a `select!` per event cost a lock and a waiter registration each, 4% of
//! the relay's CPU in the broadcast benchmark).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};
use tonic::Status;

use crate::proto::SubscribeResponse;

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

/// A queued event. Boxed: the queue allocates its slots 32 at a time, and an idle stream's first
/// block of 8-byte slots costs a quarter KiB where unboxed events (about 200 bytes each) cost 6 KiB.
struct Queued {
    event: SubscribeResponse,
    /// Sent with backpressure: it holds one of the queue's patient places until taken.
    patient: bool,
}

type Item = Box<Queued>;

/// The stream is gone (client left or it was ended): producers stop.
#[derive(Debug)]
pub struct Closed;

/// Producers' end of a stream's queue; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Item>,
    shared: Arc<Shared>,
}

/// What the producers and the drain share: one allocation per stream.
struct Shared {
    status: Mutex<Option<Status>>,
    /// Set by [`Outbox::end`] before `done` is cancelled: the drain reads it per event.
    ended: AtomicBool,
    /// Cancelled when the stream ends for any reason, including the client leaving.
    done: CancellationToken,
    /// Set on every message; the heartbeat clears it and only beats when it was already clear.
    busy: AtomicBool,
    /// The part of the queue that waiting senders may fill; the drain gives each place back.
    patient: Semaphore,
}

impl Outbox {
    /// A queue of `capacity` events and the stream tonic writes from. Dropping the stream (the
    /// client left) cancels [`Outbox::done`].
    pub fn new(capacity: usize) -> (Self, ResponseStream) {
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            status: Mutex::new(None),
            ended: AtomicBool::new(false),
            done: CancellationToken::new(),
            busy: AtomicBool::new(false),
            patient: Semaphore::new((capacity / 2).max(1)),
        });
        let drain = Drain {
            done: shared.done.clone().cancelled_owned(),
            _guard: shared.done.clone().drop_guard(),
            rx,
            shared: shared.clone(),
            finished: false,
        };
        (Self { tx, shared }, Box::pin(drain))
    }

    /// Waits for room: for history, which the server produces at the client's pace.
    pub async fn send(&self, event: SubscribeResponse) -> Result<(), Closed> {
        self.shared.busy.store(true, Ordering::Relaxed);
        tokio::select! {
            r = async {
                let place = self.shared.patient.acquire().await.map_err(|_| Closed)?;
                self.tx.send(Box::new(Queued { event, patient: true })).await.map_err(|_| Closed)?;
                // Queued: the drain gives the place back when it takes the event. Forgotten only
                // now, so a send abandoned while waiting for room gives its place back.
                place.forget();
                Ok(())
            } => r,
            _ = self.shared.done.cancelled() => Err(Closed),
        }
    }

    /// Queues without waiting: for live messages. A full queue ends the stream as a slow consumer.
    pub fn offer(&self, event: SubscribeResponse) -> Result<(), Closed> {
        self.shared.busy.store(true, Ordering::Relaxed);
        self.offer_quietly(event)
    }

    /// [`Outbox::offer`] without marking the stream busy: for the heartbeat, which must not count
    /// as traffic that makes the next heartbeat unnecessary.
    pub fn offer_quietly(&self, event: SubscribeResponse) -> Result<(), Closed> {
        if self.shared.ended.load(Ordering::Acquire) {
            return Err(Closed);
        }
        match self.tx.try_send(Box::new(Queued { event, patient: false })) {
            Ok(()) => Ok(()),
            // Ended already: the drain stopped taking events, which is no slow consumer.
            Err(mpsc::error::TrySendError::Full(_)) if self.shared.ended.load(Ordering::Acquire) => Err(Closed),
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
        if self.shared.ended.load(Ordering::Acquire) {
            return Err(Closed);
        }
        match self.tx.try_send(Box::new(Queued { event, patient: false })) {
            Ok(()) => {
                self.shared.busy.store(true, Ordering::Relaxed);
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
        self.shared.status.lock().expect("outbox lock").get_or_insert(status);
        self.shared.ended.store(true, Ordering::Release);
        self.shared.done.cancel();
    }

    /// Resolves when the stream has ended.
    pub fn done(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shared.done.cancelled()
    }

    /// Whether anything was queued since the last call.
    pub fn take_busy(&self) -> bool {
        self.shared.busy.swap(false, Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// The stream tonic writes from: queued events until the stream ends, then its status.
    struct Drain {
        rx: mpsc::Receiver<Item>,
        shared: Arc<Shared>,
        // Registered only while the queue is empty.
        #[pin]
        done: WaitForCancellationFutureOwned,
        finished: bool,
        _guard: DropGuard,
    }
}

impl Stream for Drain {
    type Item = Result<SubscribeResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        // An ending status jumps the queue.
        if !this.shared.ended.load(Ordering::Acquire) {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(queued)) => {
                    let Queued { event, patient } = *queued;
                    if patient {
                        this.shared.patient.add_permits(1);
                    }
                    if let Some(crate::proto::subscribe_response::Event::Message(m)) = &event.event {
                        // Latency only for live broadcast and perUser messages: history pages (sent
                        // patiently) and queue messages (which wait for a worker) are old by design.
                        let live = !patient && !m.needs_ack;
                        crate::metrics::delivered(live.then_some(m.ts));
                    }
                    return Poll::Ready(Some(Ok(event)));
                }
                // Every producer is gone: the stream ends, with its status if one was set.
                Poll::Ready(None) => {}
                Poll::Pending => {
                    if this.done.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        *this.finished = true;
        Poll::Ready(this.shared.status.lock().expect("outbox lock").take().map(Err))
    }
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
    async fn an_ending_status_jumps_the_queue_and_wakes_an_idle_stream() {
        let (outbox, mut stream) = Outbox::new(4);
        outbox.offer(beat(1)).unwrap();
        outbox.end(Status::permission_denied("gone"));
        assert_eq!(stream.next().await.unwrap().unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(stream.next().await.is_none());

        // Waiting on an empty queue, the stream still learns of its end.
        let (outbox, mut stream) = Outbox::new(4);
        let waiting = tokio::spawn(async move { stream.next().await.map(|r| r.unwrap_err().code()) });
        tokio::task::yield_now().await;
        outbox.end(Status::unavailable("bye"));
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert_eq!(woken.expect("the idle stream was not woken").unwrap(), Some(tonic::Code::Unavailable));
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
    async fn an_ended_stream_refuses_events_whatever_the_room() {
        let (outbox, _stream) = Outbox::new(8);
        outbox.end(Status::unavailable("bye"));
        assert!(outbox.offer(beat(1)).is_err());
        assert!(outbox.offer_or_skip(beat(2)).is_err());
        assert!(outbox.offer_quietly(beat(3)).is_err());
    }

    #[tokio::test]
    async fn a_heartbeat_does_not_mark_the_stream_busy() {
        let (outbox, _stream) = Outbox::new(8);
        outbox.offer_quietly(beat(1)).unwrap();
        assert!(!outbox.take_busy());
        outbox.offer(beat(2)).unwrap();
        assert!(outbox.take_busy());
    }

    #[tokio::test]
    async fn an_abandoned_send_gives_its_place_back() {
        // Two places for history; live messages fill the rest of the queue.
        let (outbox, mut stream) = Outbox::new(4);
        outbox.send(beat(1)).await.unwrap();
        outbox.offer(beat(2)).unwrap();
        outbox.offer(beat(3)).unwrap();
        outbox.offer(beat(4)).unwrap();
        // Holds a place, then waits for queue room; given up before any comes.
        let abandoned = tokio::time::timeout(std::time::Duration::from_millis(50), outbox.send(beat(5))).await;
        assert!(abandoned.is_err());
        for _ in 0..4 {
            stream.next().await.unwrap().unwrap();
        }
        // Both places are free again: two sends go through without the drain taking anything.
        for ts in [6, 7] {
            tokio::time::timeout(std::time::Duration::from_secs(5), outbox.send(beat(ts)))
                .await
                .expect("a place was lost to the abandoned send")
                .unwrap();
        }
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
