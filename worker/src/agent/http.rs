//! The worker's own HTTP port: `/metrics` ([`crate::metrics`], Prometheus text) and
//! `/healthz` (200 once registered with the coordinator, 503 before), for the
//! StatefulSet's probes and scrapers. Bound before serving, so a bad address fails the
//! start and port 0 works (the log names the port).

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;

/// Binds `addr` and serves in the background; `registered` says whether /healthz is ok.
pub async fn serve(
    addr: SocketAddr,
    registered: impl Fn() -> bool + Send + Sync + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e} (set --metrics-addr, or `off`)"))?;
    let bound = listener.local_addr()?;
    let registered = Arc::new(registered);
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    tokio::task::spawn_blocking(|| crate::metrics::global().render())
                        .await
                        .unwrap_or_default(),
                )
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let registered = registered.clone();
                async move {
                    if registered() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "registering with the coordinator")
                    }
                }
            }),
        );
    tracing::info!("metrics and health on http://{bound}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics server stopped: {e}");
        }
    });
    Ok(bound)
}
