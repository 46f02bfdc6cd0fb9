//! The worker's connection to the coordinator: a lazily connecting channel (so a
//! restarting coordinator is just a few failed calls, not a dead worker), the bearer
//! token on every call, and retry with back-off for calls that must get through.

use std::future::Future;
use std::time::Duration;
use surgery_proto::error::decode;
use surgery_proto::v1::ErrorKind;
use surgery_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = WorkerServiceClient<InterceptedService<Channel, Bearer>>;

/// A client for `addr` (`http://host:port` or `host:port`); connects on first use.
pub fn client(addr: &str, token: Option<&str>) -> anyhow::Result<Client> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("coordinator address `{addr}`: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let bearer = match token {
        Some(token) if !token.is_empty() => Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| anyhow::anyhow!("the token has characters a header cannot carry"))?,
        ),
        _ => None,
    };
    let channel = endpoint.connect_lazy();
    Ok(WorkerServiceClient::with_interceptor(channel, Bearer(bearer))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Transient: the coordinator is down, restarting or overloaded.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && decode(status).kind() != ErrorKind::Unauthenticated
}

/// Retries `call` while the coordinator is unreachable, with capped exponential back-off,
/// for at most `patience`; other errors return at once.
pub async fn retrying<T, F, Fut>(what: &str, patience: Duration, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if is_transient(&status) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(%what, error = %status.message(), "coordinator unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(status) => return Err(status),
        }
    }
}
