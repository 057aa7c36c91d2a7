//! OpenTelemetry traces: a publish with the client's `traceparent` makes one trace that holds the
//! publish on one relay (with its Redis append and NATS publish) and the delivery on another,
//! exported over OTLP/gRPC to a receiver that speaks the protocol.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use relay_tests::{Stack, StackOptions, eventually, unique};

/// One span as received: (service.instance.id, span name, trace id, parent span id).
type Span = (String, String, Vec<u8>, Vec<u8>);

/// An OTLP trace receiver that keeps every span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let instance = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.instance.id")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((instance.clone(), span.name, span.trace_id, span.parent_span_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test]
async fn one_trace_follows_a_message_from_the_publishing_relay_to_the_delivering_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let stack = Stack::with(
        StackOptions::default()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_SERVICE_NAME", "relay"),
    )
    .await;
    let alice = stack.pocketbase.create_user("alice").await;
    let ch = unique("traced");
    let mut sub = stack.client(1).await.subscribe(&alice.token, &[(&ch, None)]).await.unwrap();
    sub.recovery().await;

    // The client's own trace: 16 bytes of trace id, 8 of parent span id.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let channel = tonic::transport::Channel::from_shared(stack.relays[0].addr()).unwrap().connect().await.unwrap();
    let mut client = relay::proto::relay_service_client::RelayServiceClient::new(channel);
    client.publish(traced(&alice.token, &ch, "follow me", trace_id, parent)).await.unwrap();
    assert_eq!(sub.messages(1, Duration::from_secs(10)).await[0].text, "follow me");

    let trace = hex(trace_id);
    let ours = || receiver.0.lock().unwrap().iter().filter(|s| s.2 == trace).cloned().collect::<Vec<_>>();
    eventually(Duration::from_secs(20), "the publish and the delivery in one trace", || async {
        let spans = ours();
        ["relay.publish", "redis.append", "nats.publish", "relay.deliver"]
            .iter()
            .all(|n| spans.iter().any(|s| s.1 == *n))
    })
    .await;
    let spans = ours();
    let find = |name: &str| spans.iter().find(|s| s.1 == name).unwrap().clone();
    let (publish, deliver) = (find("relay.publish"), find("relay.deliver"));
    assert_eq!(publish.3, hex(parent), "the publish continues the client's span");
    assert_ne!(publish.0, deliver.0, "published on one relay, delivered by the other: {spans:?}");
    assert!(!publish.0.is_empty(), "{spans:?}");

    // A queue channel: the worker's relay continues the trace when it hands the message over.
    let jobs = unique("jobs");
    stack.declare_spec(&jobs, serde_json::json!({"delivery": "queue", "limits": {"publishPerSecondPerUser": 0}})).await;
    let mut worker = stack.client(1).await.subscribe(&alice.token, &[(&jobs, None)]).await.unwrap();
    let queue_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    client.publish(traced(&alice.token, &jobs, "work", queue_trace, parent)).await.unwrap();
    assert_eq!(worker.messages(1, Duration::from_secs(10)).await[0].text, "work");
    let queue_trace = hex(queue_trace);
    eventually(Duration::from_secs(20), "the queue delivery in the publisher's trace", || async {
        receiver.0.lock().unwrap().iter().any(|s| s.2 == queue_trace && s.1 == "relay.deliver")
    })
    .await;
}

/// A Publish request carrying the client's W3C trace context (sampled).
fn traced(
    token: &str,
    channel: &str,
    text: &str,
    trace_id: &str,
    parent: &str,
) -> tonic::Request<relay::proto::PublishRequest> {
    let mut req = tonic::Request::new(relay::proto::PublishRequest {
        channelid: channel.into(),
        text: text.into(),
        idempotency_key: String::new(),
        ephemeral: false,
    });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{parent}-01").parse().unwrap());
    req
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}
