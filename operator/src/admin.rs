//! The admin port: `/metrics`, `/healthz`, `/readyz` (ready while NATS and Redis answer).

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::backends::Backends;

pub async fn serve(listener: TcpListener, backends: Backends) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let backends = backends.clone();
                async move {
                    if backends.reachable().await {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "nats or redis unreachable")
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}
