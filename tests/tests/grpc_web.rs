//! The browser path: gRPC-web over HTTP/1.1 on the same port as gRPC, with CORS.

use prost::Message as _;
use relay::proto::{PublishRequest, PublishResponse};
use relay_tests::{Stack, StackOptions, unique};

/// One gRPC-web frame: flag byte, big-endian length, payload.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a gRPC-web body into (data frames, trailers text).
fn unframe(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut data, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let payload = &body[5..5 + len];
        if body[0] & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        } else {
            data.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    (data, trailers)
}

#[tokio::test]
async fn publish_over_grpc_web_http1_with_cors() {
    let stack = Stack::with(StackOptions { relays: 1, ..Default::default() }).await;
    let alice = stack.pocketbase.create_user("alice").await;
    let url = format!("{}/relay.v1.RelayService/Publish", stack.relays[0].addr());
    let http = reqwest::Client::builder().http1_only().build().unwrap();

    // CORS preflight, as a browser on another origin sends it.
    let pre = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,x-grpc-web")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "preflight: {}", pre.status());
    assert!(pre.headers().contains_key("access-control-allow-origin"));

    let ch = unique("web");
    let req = PublishRequest {
        channelid: ch.clone(),
        text: "from a browser".into(),
        idempotency_key: String::new(),
        ephemeral: false,
    };
    let reply = http
        .post(&url)
        .header("origin", "http://app.example")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {}", alice.token))
        .body(frame(0, &req.encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.version(), reqwest::Version::HTTP_11);
    assert!(reply.status().is_success());
    let expose = reply.headers().get("access-control-expose-headers").map(|v| v.to_str().unwrap().to_owned());
    assert!(expose.unwrap_or_default().contains("grpc-status"), "browsers must be able to read grpc-status");
    let (data, trailers) = unframe(&reply.bytes().await.unwrap());
    assert!(trailers.contains("grpc-status:0"), "trailers: {trailers:?}");
    let m = PublishResponse::decode(data[0].as_slice()).unwrap().message.unwrap();
    assert_eq!((m.channelid.as_str(), m.userid.as_str(), m.seq), (ch.as_str(), alice.id.as_str(), 1));

    // Errors reach the browser as a status with a message.
    let bad = PublishRequest {
        channelid: "chat.*".into(),
        text: "x".into(),
        idempotency_key: String::new(),
        ephemeral: false,
    };
    let reply = http
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .header("authorization", format!("Bearer {}", alice.token))
        .body(frame(0, &bad.encode_to_vec()))
        .send()
        .await
        .unwrap();
    let status = reply.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    let body = reply.bytes().await.unwrap();
    let (_, trailers) = unframe(&body);
    assert!(
        status.as_deref() == Some("3") || trailers.contains("grpc-status:3"),
        "INVALID_ARGUMENT: {status:?} {trailers:?}"
    );
}
