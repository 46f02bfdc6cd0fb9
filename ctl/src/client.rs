//! Reaching the coordinator: the address as the user wrote it made into a URL, one
//! eagerly connected channel (so an unreachable coordinator is reported once, clearly,
//! before any request), and the interceptor that puts the bearer token on every call.

use crate::error::CtlError;
use std::time::Duration;
use surgery_proto::v1::job_service_client::JobServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where surgery-coordinator listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";
/// The port added to a bare host name.
const DEFAULT_PORT: u16 = 7070;

/// The JobService client every command uses.
pub type Client = JobServiceClient<InterceptedService<Channel, BearerAuth>>;

/// `host:port` becomes `http://host:port`, a bare `host` also gets the default port; an
/// `http://` or `https://` URL is kept as written. Anything else is refused here, at
/// argument parsing, rather than as a confusing transport error later.
pub fn normalize_addr(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("the address is empty".to_string());
    }
    let url = match raw.split_once("://") {
        Some((_, "" | "/")) => return Err(format!("`{raw}` has no host")),
        Some((scheme, _)) if scheme == "http" || scheme == "https" => raw.to_string(),
        Some((scheme, _)) => return Err(format!("unsupported scheme `{scheme}`; use http:// or https://")),
        None if has_port(raw) => format!("http://{raw}"),
        None => format!("http://{raw}:{DEFAULT_PORT}"),
    };
    let url = url.trim_end_matches('/').to_string();
    let uri: Uri = url.parse().map_err(|err| format!("`{raw}` is not an address: {err}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{raw}` has no host"));
    }
    Ok(url)
}

/// Whether a scheme-less authority (possibly with a path) names a port; `[::1]` alone
/// has colons but no port.
fn has_port(authority: &str) -> bool {
    let authority = authority.split('/').next().unwrap_or_default();
    match authority.rsplit_once(']') {
        Some((_, rest)) => rest.starts_with(':'),
        None => authority.contains(':'),
    }
}

/// `Bearer <token>` as a metadata value, or why the token cannot be sent.
pub fn bearer_value(token: &str) -> Result<MetadataValue<Ascii>, String> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token must be printable ASCII".to_string())
}

/// Adds `authorization: Bearer <token>` to every request when a token is configured.
#[derive(Clone, Debug, Default)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerAuth {
    /// An empty token counts as none, so `SURGERY_TOKEN=` switches auth off.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let header = match token {
            Some(token) if !token.is_empty() => Some(bearer_value(token)?),
            _ => None,
        };
        Ok(BearerAuth { header })
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// Connects to the coordinator at `addr` (already normalised), giving up after
/// `timeout`. Only the connection is bounded: streams such as `watch` run for as long
/// as the job does.
pub async fn connect(addr: &str, token: Option<&str>, timeout: Duration) -> Result<Client, CtlError> {
    let unreachable = |reason: String| CtlError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let auth = BearerAuth::new(token).map_err(CtlError::Usage)?;
    let endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|err| unreachable(error_chain(&err)))?
        .connect_timeout(timeout);
    // connect_timeout covers the TCP connect; the outer timeout also covers name
    // resolution and the HTTP/2 handshake.
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(err)) => return Err(unreachable(error_chain(&err))),
        Err(_) => {
            return Err(unreachable(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )));
        }
    };
    Ok(JobServiceClient::with_interceptor(channel, auth))
}

/// The error and its sources, joined: the useful part of a connect error ("Connection
/// refused") is a few sources down.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(current) = next {
        let text = current.to_string();
        // Some layers repeat their source's text in their own; keep each text once.
        if !text.is_empty() && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    // tonic's top level says only "transport error"; the parts below say which.
    if parts.len() > 1 && parts[0] == "transport error" {
        parts.remove(0);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn addresses_without_a_scheme_get_http() {
        assert_eq!(normalize_addr("127.0.0.1:7070").unwrap(), "http://127.0.0.1:7070");
        assert_eq!(normalize_addr("coordinator:9000").unwrap(), "http://coordinator:9000");
        assert_eq!(normalize_addr(" coordinator:9000 ").unwrap(), "http://coordinator:9000");
        assert_eq!(normalize_addr("[::1]:7070").unwrap(), "http://[::1]:7070");
    }

    #[test]
    fn a_bare_host_gets_the_default_port() {
        assert_eq!(normalize_addr("coordinator").unwrap(), "http://coordinator:7070");
        assert_eq!(normalize_addr("[::1]").unwrap(), "http://[::1]:7070");
    }

    #[test]
    fn urls_are_kept() {
        assert_eq!(
            normalize_addr("http://127.0.0.1:7070").unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            normalize_addr("https://surgery.example.com").unwrap(),
            "https://surgery.example.com"
        );
        assert_eq!(normalize_addr("http://c:1/").unwrap(), "http://c:1");
        assert_eq!(normalize_addr(DEFAULT_ADDR).unwrap(), DEFAULT_ADDR);
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert!(normalize_addr("").is_err());
        assert!(
            normalize_addr("grpc://c:1")
                .unwrap_err()
                .contains("unsupported scheme `grpc`")
        );
        assert!(normalize_addr("http://").is_err());
        assert!(normalize_addr("a b:1").is_err());
    }

    #[test]
    fn the_interceptor_adds_the_bearer_token() {
        let mut auth = BearerAuth::new(Some("s3cret")).unwrap();
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer s3cret");
    }

    #[test]
    fn no_or_empty_token_sends_no_header() {
        for token in [None, Some("")] {
            let mut auth = BearerAuth::new(token).unwrap();
            let request = auth.call(tonic::Request::new(())).unwrap();
            assert!(request.metadata().get("authorization").is_none());
        }
    }

    #[test]
    fn error_chains_read_from_the_top_cause_down() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|layer| layer as _)
            }
        }
        let refused = Layer("Connection refused", None);
        let tcp = Layer("tcp connect error", Some(Box::new(refused)));
        let top = Layer("transport error", Some(Box::new(tcp)));
        assert_eq!(error_chain(&top), "tcp connect error: Connection refused");
        assert_eq!(error_chain(&Layer("transport error", None)), "transport error");
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused() {
        assert!(BearerAuth::new(Some("line\nbreak")).is_err());
    }
}
