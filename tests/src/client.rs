//! A tonic client of the relay, with the helpers tests keep needing.

use std::time::Duration;

use relay::proto::relay_service_client::RelayServiceClient;
use relay::proto::{
    ChannelSubscription, Cursor, HistoryRequest, HistoryResponse, Message, PublishRequest, Recovery, SubscribeRequest,
    SubscribeResponse, cursor::Position, subscribe_response,
};
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

#[derive(Clone)]
pub struct Client {
    inner: RelayServiceClient<Channel>,
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if !token.is_empty() {
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    req
}

impl Client {
    pub async fn connect(addr: &str) -> Self {
        let channel = Channel::from_shared(addr.to_owned()).unwrap().connect_timeout(Duration::from_secs(5));
        let channel = channel.connect().await.unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Self { inner: RelayServiceClient::new(channel) }
    }

    pub async fn publish(&mut self, token: &str, channel: &str, text: &str) -> Result<Message, Status> {
        self.publish_with_key(token, channel, text, "").await
    }

    pub async fn publish_with_key(
        &mut self,
        token: &str,
        channel: &str,
        text: &str,
        key: &str,
    ) -> Result<Message, Status> {
        let req = PublishRequest { channelid: channel.into(), text: text.into(), idempotency_key: key.into() };
        Ok(self.inner.publish(authed(token, req)).await?.into_inner().message.expect("stored message"))
    }

    pub async fn history(
        &mut self,
        token: &str,
        channel: &str,
        cursor: Option<Position>,
        limit: u32,
    ) -> Result<HistoryResponse, Status> {
        let req =
            HistoryRequest { channelid: channel.into(), cursor: cursor.map(|p| Cursor { position: Some(p) }), limit };
        Ok(self.inner.history(authed(token, req)).await?.into_inner())
    }

    /// Subscribes to channels, each with an optional cursor.
    pub async fn subscribe(&mut self, token: &str, channels: &[(&str, Option<Position>)]) -> Result<Sub, Status> {
        let channels = channels
            .iter()
            .map(|(c, p)| ChannelSubscription {
                channelid: (*c).into(),
                cursor: p.map(|p| Cursor { position: Some(p) }),
            })
            .collect();
        let stream = self.inner.subscribe(authed(token, SubscribeRequest { channels })).await?.into_inner();
        Ok(Sub { stream })
    }
}

/// One event of a Subscribe stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message(Message),
    Recovery(Recovery),
    Heartbeat,
}

/// An open Subscribe stream.
pub struct Sub {
    stream: Streaming<SubscribeResponse>,
}

impl Sub {
    /// The next event; Err for the ending status; panics after `within` or when the stream ends
    /// without a status.
    pub async fn next(&mut self, within: Duration) -> Result<Event, Status> {
        let item = tokio::time::timeout(within, self.stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?}"))?;
        let event = item.expect("stream ended without a status").event.expect("event");
        Ok(match event {
            subscribe_response::Event::Message(m) => Event::Message(m),
            subscribe_response::Event::Recovery(r) => Event::Recovery(r),
            subscribe_response::Event::Heartbeat(_) => Event::Heartbeat,
        })
    }

    /// The next event if one comes within `within`.
    pub async fn try_next(&mut self, within: Duration) -> Option<Result<Event, Status>> {
        match tokio::time::timeout(within, self.stream.message()).await {
            Err(_) => None,
            Ok(Err(s)) => Some(Err(s)),
            Ok(Ok(None)) => None,
            Ok(Ok(Some(r))) => Some(Ok(match r.event.expect("event") {
                subscribe_response::Event::Message(m) => Event::Message(m),
                subscribe_response::Event::Recovery(r) => Event::Recovery(r),
                subscribe_response::Event::Heartbeat(_) => Event::Heartbeat,
            })),
        }
    }

    /// The next `n` messages, skipping heartbeats and recovery markers.
    pub async fn messages(&mut self, n: usize, within: Duration) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.next(within)).await {
                Ok(Ok(Event::Message(m))) => out.push(m),
                Ok(Ok(_)) => {}
                Ok(Err(s)) => panic!("stream ended with {s:?} after {} of {n} messages", out.len()),
                Err(_) => panic!("only {} of {n} messages within {within:?}: {out:?}", out.len()),
            }
        }
        out
    }

    /// The recovery marker, which comes first for each channel.
    pub async fn recovery(&mut self) -> Recovery {
        match self.next(Duration::from_secs(5)).await {
            Ok(Event::Recovery(r)) => r,
            other => panic!("expected a recovery marker, got {other:?}"),
        }
    }

    /// Waits for the status that ends the stream, skipping events.
    pub async fn ending(&mut self, within: Duration) -> Status {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.message()).await {
                Err(_) => panic!("stream did not end within {within:?}"),
                Ok(Err(s)) => return s,
                Ok(Ok(None)) => panic!("stream ended without a status"),
                Ok(Ok(Some(_))) => {}
            }
        }
    }
}
