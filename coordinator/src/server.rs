//! Starts the coordinator: open the store, bind the port, then serve gRPC (JobService,
//! WorkerService, grpc.health.v1, reflection v1 and v1alpha) and the HTTP pages on that one port until
//! the shutdown future resolves; then flush the store. A library function so tests and
//! benchmarks can run a coordinator in-process as well as through the binary.

use crate::config::Config;
use crate::engine::{Clock, Engine, SystemClock};
use crate::http;
use crate::job_service::JobApi;
use crate::metrics::Metrics;
use crate::worker_service::WorkerApi;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use surgery_proto::v1::job_service_server::JobServiceServer;
use surgery_proto::v1::worker_service_server::WorkerServiceServer;
use surgery_proto::v1::{ErrorKind, ServiceError};
use tokio::net::TcpListener;

/// How long open connections may finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Generous message limit: a task assignment carries the spec and its inputs.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Opens the store and binds the port; returns the address actually bound (port 0 picks
/// one) and a future that serves until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, impl Future<Output = anyhow::Result<()>>)> {
    start_with_clock(config, Arc::new(SystemClock), shutdown).await
}

pub async fn start_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, impl Future<Output = anyhow::Result<()>>)> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
    let engine = Arc::new(Engine::open(config.clone(), clock, Metrics::new())?);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<JobApi>>().await;
    health.set_serving::<WorkerServiceServer<WorkerApi>>().await;
    // Reflection in both versions: grpcurl speaks v1, while Python's grpcio-reflection
    // (and other stock clients) only speak v1alpha.
    let described = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(surgery_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = described().build_v1()?;
    let reflection_v1alpha = described().build_v1alpha()?;
    let jobs = JobServiceServer::new(JobApi { engine: engine.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let workers = WorkerServiceServer::new(WorkerApi { engine: engine.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let grpc = tonic::service::Routes::new(jobs)
        .add_service(workers)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .into_axum_router();
    let token = config.auth_token.clone();
    let app = grpc
        .merge(http::router(engine.clone()))
        .layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let token = token.clone();
            async move { authorize(token.as_deref(), req, next).await }
        }));

    let ticker = {
        let engine = engine.clone();
        let period = config.tick;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                engine.tick().await;
            }
        })
    };

    tracing::info!(listen = %local, "coordinator serving");
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let signal = {
        let engine = engine.clone();
        async move {
            shutdown.await;
            // Parked long polls answer "no task" now instead of holding the shutdown.
            engine.release_waiters();
            let _ = stopping_tx.send(true);
        }
    };
    let serve = async move {
        // Small RPCs must not sit behind Nagle's algorithm and delayed ACKs (40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {err}");
            }
        });
        let server = axum::serve(listener, app).with_graceful_shutdown(signal);
        // Clients that keep connections open get a grace period, not a veto.
        let grace = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let result = tokio::select! {
            result = server => result,
            () = grace => {
                tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after shutdown began; closing them");
                Ok(())
            }
        };
        ticker.abort();
        health.set_not_serving::<JobServiceServer<JobApi>>().await;
        engine.close();
        tracing::info!("coordinator stopped; store flushed");
        result.map_err(anyhow::Error::from)
    };
    Ok((local, serve))
}

/// With a token configured, the surgery services need `authorization: Bearer <token>`;
/// health checks, reflection and the HTTP pages stay open for probes and people.
async fn authorize(token: Option<&str>, req: Request, next: Next) -> Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    if !req.uri().path().starts_with("/surgery.v1.") {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented == Some(token) {
        return next.run(req).await;
    }
    let why = if presented.is_some() {
        "the bearer token is wrong"
    } else {
        "this coordinator needs a bearer token (surgeryctl: --token or SURGERY_TOKEN)"
    };
    ServiceError::new(ErrorKind::Unauthenticated, why)
        .into_status()
        .into_http::<axum::body::Body>()
}
