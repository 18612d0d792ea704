//! What an exporter is built from: typed settings that `config` produces from the Collector's
//! YAML blocks once validated. Nothing here is a config string: compression, encodings and
//! verbosity are enums, endpoints are parsed URIs, headers are parsed header names and values.

use std::path::PathBuf;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use super::retry::RetryConfig;

/// `compression` of an OTLP exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// TLS to a backend (the Collector's client `tls` block once validated). The decision whether to
/// use TLS at all is the endpoint's scheme.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA(s) to trust instead of the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name to verify the server's certificate against, instead of the endpoint's host.
    pub server_name_override: Option<String>,
}

/// How a gRPC exporter reaches one endpoint, except the endpoint itself: the `otlp` exporter's
/// settings, and the template the front tier and the sampler cluster fill in per peer.
#[derive(Debug, Clone)]
pub struct GrpcClientSettings {
    /// `tls.insecure`: plain HTTP/2 for an endpoint without a scheme.
    pub insecure: bool,
    pub tls: TlsSettings,
    /// Request metadata (gRPC headers), lower-case names.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub compression: Compression,
    pub timeout: Duration,
}

/// `exporters.otlp`.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// The URI dialled, its scheme saying whether TLS is used.
    pub uri: http::Uri,
    pub client: GrpcClientSettings,
}

impl GrpcClientSettings {
    /// The settings for `endpoint` (`host:port`, `http://host:port` or `https://host:port`).
    pub fn for_endpoint(&self, endpoint: &str) -> Result<GrpcSettings, String> {
        Ok(GrpcSettings {
            uri: grpc_uri(endpoint, self.insecure)?,
            client: self.clone(),
        })
    }
}

/// `host:port`, `http://host:port` or `https://host:port` as a URI tonic can dial, with the
/// scheme saying whether TLS is used: TLS unless `insecure` (or the endpoint says `http://`),
/// always for `https://`, as the Collector's gRPC client does.
pub fn grpc_uri(endpoint: &str, insecure: bool) -> Result<http::Uri, String> {
    let uri = match endpoint.split_once("://") {
        Some(("http", rest)) if !insecure => format!("https://{rest}"),
        Some(_) => endpoint.to_string(),
        None if insecure => format!("http://{endpoint}"),
        None => format!("https://{endpoint}"),
    };
    let parsed: http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    if parsed.host().is_none() || parsed.port_u16().is_none() {
        return Err("missing host or port".into());
    }
    Ok(parsed)
}

/// `encoding` of the `otlphttp` exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpEncoding {
    Protobuf,
    Json,
}

/// `exporters.otlphttp`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The URL traces are posted to.
    pub url: http::Uri,
    pub tls: TlsSettings,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub compression: Compression,
    pub encoding: HttpEncoding,
    pub timeout: Duration,
}

/// `format` of the `file` exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One OTLP/JSON request per line.
    Json,
    /// A 4-byte big-endian length, then the protobuf request.
    Protobuf,
}

/// `exporters.file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    pub path: PathBuf,
    pub format: FileFormat,
}

/// `verbosity` of the `debug` exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// A line per batch.
    Basic,
    /// A line per span.
    Normal,
    /// The batch as OTLP/JSON.
    Detailed,
}

/// Where and how one exporter delivers.
#[derive(Debug, Clone)]
pub enum TransportSettings {
    Grpc(GrpcSettings),
    Http(HttpSettings),
    File(FileSettings),
    Debug(Verbosity),
}

/// `sending_queue`, with the Collector's defaults. Already typed in YAML, so it is its own
/// settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub enabled: bool,
    pub num_consumers: usize,
    /// Batches the queue holds.
    pub queue_size: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            num_consumers: 10,
            queue_size: 1000,
        }
    }
}

/// One exporter: its transport, retry policy and queue.
#[derive(Debug, Clone)]
pub struct ExporterSettings {
    /// The component ID (`otlp/tempo`), as metrics label it.
    pub name: String,
    pub transport: TransportSettings,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_follows_tls_insecure_like_the_collector() {
        let uri = |e, insecure| grpc_uri(e, insecure).unwrap().to_string();
        assert_eq!(uri("tempo:4317", true), "http://tempo:4317/");
        assert_eq!(uri("tempo:4317", false), "https://tempo:4317/");
        assert_eq!(uri("http://127.0.0.1:4317", true), "http://127.0.0.1:4317/");
        assert_eq!(uri("http://tempo:4317", false), "https://tempo:4317/");
        assert_eq!(uri("https://tempo:443", true), "https://tempo:443/");
        assert!(grpc_uri("tempo", true).is_err());
    }
}
