//! A tonic client of the relay, with the helpers tests keep needing.

use std::time::Duration;

use relay::proto::relay_service_client::RelayServiceClient;
use relay::proto::{
    AckRequest, ChannelSubscription, Cursor, HistoryRequest, HistoryResponse, Join, Leave, Member, Message,
    PresenceChanged, PresenceRequest, PresenceStatsRequest, PresenceStatsResponse, PublishRequest, Recovery,
    RefreshTokenRequest, SubscribeRequest, SubscribeResponse, cursor::Position, subscribe_response,
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
    /// A client that connects on first use and reconnects by itself (the relay may be down now).
    pub fn lazy(addr: &str) -> Self {
        let channel =
            Channel::from_shared(addr.to_owned()).unwrap().connect_timeout(Duration::from_secs(2)).connect_lazy();
        Self { inner: RelayServiceClient::new(channel) }
    }

    pub async fn connect(addr: &str) -> Self {
        let channel = Channel::from_shared(addr.to_owned()).unwrap().connect_timeout(Duration::from_secs(5));
        let channel = channel.connect().await.unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Self { inner: RelayServiceClient::new(channel) }
    }

    /// Opens a PublishStream fed from `requests`; the answers come back on the returned stream.
    pub async fn publish_stream(
        &mut self,
        token: &str,
        requests: impl futures::Stream<Item = relay::proto::PublishStreamRequest> + Send + 'static,
    ) -> Result<Streaming<relay::proto::PublishStreamResponse>, Status> {
        Ok(self.inner.publish_stream(authed(token, requests)).await?.into_inner())
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
        let req = PublishRequest {
            channelid: channel.into(),
            text: text.into(),
            idempotency_key: key.into(),
            ephemeral: false,
        };
        Ok(self.inner.publish(authed(token, req)).await?.into_inner().message.expect("stored message"))
    }

    /// An ephemeral publish: to the streams open now, never stored.
    pub async fn publish_ephemeral(&mut self, token: &str, channel: &str, text: &str) -> Result<Message, Status> {
        let req = PublishRequest {
            channelid: channel.into(),
            text: text.into(),
            idempotency_key: String::new(),
            ephemeral: true,
        };
        Ok(self.inner.publish(authed(token, req)).await?.into_inner().message.expect("published message"))
    }

    pub async fn presence(&mut self, token: &str, channel: &str) -> Result<Vec<Member>, Status> {
        let req = PresenceRequest { channelid: channel.into() };
        Ok(self.inner.presence(authed(token, req)).await?.into_inner().members)
    }

    pub async fn presence_stats(&mut self, token: &str, channel: &str) -> Result<PresenceStatsResponse, Status> {
        let req = PresenceStatsRequest { channelid: channel.into() };
        Ok(self.inner.presence_stats(authed(token, req)).await?.into_inner())
    }

    pub async fn history(
        &mut self,
        token: &str,
        channel: &str,
        cursor: Option<Position>,
        limit: u32,
    ) -> Result<HistoryResponse, Status> {
        self.history_at(token, channel, cursor.map(|p| at(p, "")), limit).await
    }

    /// History after a cursor that may carry an epoch.
    pub async fn history_at(
        &mut self,
        token: &str,
        channel: &str,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<HistoryResponse, Status> {
        let req = HistoryRequest { channelid: channel.into(), cursor, limit };
        Ok(self.inner.history(authed(token, req)).await?.into_inner())
    }

    /// Acks queue messages of a stream; returns how many were waiting.
    pub async fn ack(
        &mut self,
        token: &str,
        stream_id: &str,
        channel: &str,
        epoch: &str,
        seqs: &[u64],
    ) -> Result<u32, Status> {
        let req = AckRequest {
            stream_id: stream_id.into(),
            channelid: channel.into(),
            seqs: seqs.to_vec(),
            epoch: epoch.into(),
        };
        Ok(self.inner.ack(authed(token, req)).await?.into_inner().acked)
    }

    /// Gives an open stream a fresh token; returns its expiry.
    pub async fn refresh_token(&mut self, token: &str, stream_id: &str) -> Result<i64, Status> {
        let req = RefreshTokenRequest { stream_id: stream_id.into() };
        Ok(self.inner.refresh_token(authed(token, req)).await?.into_inner().token_expires)
    }

    /// Subscribes to channels, each with an optional cursor.
    pub async fn subscribe(&mut self, token: &str, channels: &[(&str, Option<Position>)]) -> Result<Sub, Status> {
        let channels: Vec<_> = channels.iter().map(|(c, p)| (*c, p.map(|p| at(p, "")))).collect();
        self.subscribe_at(token, &channels).await
    }

    /// Subscribes with cursors that may carry epochs. Returns once the stream has started (its
    /// first event, which gives its id, is read here).
    pub async fn subscribe_at(&mut self, token: &str, channels: &[(&str, Option<Cursor>)]) -> Result<Sub, Status> {
        let channels = channels
            .iter()
            .map(|(c, cursor)| ChannelSubscription { channelid: (*c).into(), cursor: cursor.clone() })
            .collect();
        let mut stream = self.inner.subscribe(authed(token, SubscribeRequest { channels })).await?.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no StreamStarted within 10s"))??;
        match first.and_then(|r| r.event) {
            Some(subscribe_response::Event::Started(s)) => {
                Ok(Sub { stream, id: s.stream_id, token_expires: s.token_expires })
            }
            other => panic!("the first event of a stream must be StreamStarted, got {other:?}"),
        }
    }
}

/// A cursor at `position` in `epoch` (empty: any).
pub fn at(position: Position, epoch: &str) -> Cursor {
    Cursor { position: Some(position), epoch: epoch.to_owned() }
}

/// One event of a Subscribe stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message(Message),
    Recovery(Recovery),
    Heartbeat,
    Join(Join),
    Leave(Leave),
    Ephemeral(Message),
    PresenceChanged(PresenceChanged),
}

/// An open Subscribe stream.
pub struct Sub {
    stream: Streaming<SubscribeResponse>,
    /// From StreamStarted: what Ack and RefreshToken name.
    pub id: String,
    pub token_expires: i64,
}

fn convert(event: subscribe_response::Event) -> Event {
    match event {
        subscribe_response::Event::Message(m) => Event::Message(m),
        subscribe_response::Event::Recovery(r) => Event::Recovery(r),
        subscribe_response::Event::Heartbeat(_) => Event::Heartbeat,
        subscribe_response::Event::Join(j) => Event::Join(j),
        subscribe_response::Event::Leave(l) => Event::Leave(l),
        subscribe_response::Event::Ephemeral(m) => Event::Ephemeral(m),
        subscribe_response::Event::PresenceChanged(c) => Event::PresenceChanged(c),
        subscribe_response::Event::Started(s) => panic!("StreamStarted in the middle of a stream: {s:?}"),
    }
}

impl Sub {
    /// The next event; Err for the ending status; panics after `within` or when the stream ends
    /// without a status.
    pub async fn next(&mut self, within: Duration) -> Result<Event, Status> {
        let item = tokio::time::timeout(within, self.stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?}"))?;
        let event = item.expect("stream ended without a status").event.expect("event");
        Ok(convert(event))
    }

    /// The next event if one comes within `within`.
    pub async fn try_next(&mut self, within: Duration) -> Option<Result<Event, Status>> {
        match tokio::time::timeout(within, self.stream.message()).await {
            Err(_) => None,
            Ok(Err(s)) => Some(Err(s)),
            Ok(Ok(None)) => None,
            Ok(Ok(Some(r))) => Some(Ok(convert(r.event.expect("event")))),
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
