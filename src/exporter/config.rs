//! The exporters' YAML blocks in the Collector's shape (`exporters.otlp`, `exporters.otlphttp`,
//! `exporters.file`, `exporters.debug`, and the `tls` block they share), validated into
//! [`super::settings`]. Every check reports the YAML path it is about; settings exist only for a
//! block with no errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::retry::RetryConfig;
use super::settings::{
    grpc_uri, Compression, ExporterSettings, FileFormat, FileSettings, GrpcClientSettings,
    HttpEncoding, HttpSettings, QueueConfig, TlsSettings, TransportSettings, Verbosity,
};
use crate::auth::{AuthenticatorRef, ClientAuth};
use crate::yaml::{duration, ConfigError};

/// `tls` of an exporter, as in the Collector: gRPC uses TLS unless `insecure: true` (an
/// `https://` endpoint always does); HTTP uses TLS for `https://` URLs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsClientConfig {
    pub insecure: bool,
    pub insecure_skip_verify: bool,
    /// PEM file of the CA(s) to trust instead of the bundled Mozilla roots.
    pub ca_file: String,
    /// PEM client certificate and key, for mutual TLS.
    pub cert_file: String,
    pub key_file: String,
    /// The name to verify the server's certificate against, instead of the endpoint's host.
    pub server_name_override: String,
}

impl TlsClientConfig {
    /// Checks what can be checked without reading files.
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> TlsSettings {
        if self.insecure_skip_verify {
            errors.push(ConfigError::new(
                format!("{path}.insecure_skip_verify"),
                "insecure_skip_verify is not supported: trust the backend's CA with ca_file instead",
            ));
        }
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            errors.push(ConfigError::new(
                path,
                "cert_file and key_file go together (client certificate and its key)",
            ));
        }
        let file = |f: &str| (!f.is_empty()).then(|| PathBuf::from(f));
        TlsSettings {
            ca_file: file(&self.ca_file),
            client_cert: file(&self.cert_file).zip(file(&self.key_file)),
            server_name_override: (!self.server_name_override.is_empty())
                .then(|| self.server_name_override.clone()),
        }
    }
}

/// `exporters.otlp`: OTLP over gRPC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpExporterConfig {
    /// `host:port`, or `http://host:port`.
    pub endpoint: String,
    pub tls: TlsClientConfig,
    pub headers: BTreeMap<String, String>,
    /// `gzip` (default), `zstd` or `none`.
    pub compression: String,
    #[serde(with = "duration::go")]
    pub timeout: Duration,
    pub retry_on_failure: RetryConfig,
    pub sending_queue: QueueConfig,
    /// `auth: {authenticator: NAME}`: the config loader resolves it and passes the header in.
    pub auth: Option<AuthenticatorRef>,
}

impl Default for OtlpExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            tls: TlsClientConfig::default(),
            headers: BTreeMap::new(),
            compression: "gzip".into(),
            timeout: Duration::from_secs(5),
            retry_on_failure: RetryConfig::default(),
            sending_queue: QueueConfig::default(),
            auth: None,
        }
    }
}

/// `exporters.otlphttp`: OTLP over HTTP (`/v1/traces`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpHttpExporterConfig {
    /// Base URL; `/v1/traces` is appended.
    pub endpoint: String,
    /// Full URL for traces, overriding `endpoint`.
    pub traces_endpoint: String,
    pub tls: TlsClientConfig,
    pub headers: BTreeMap<String, String>,
    pub compression: String,
    /// `proto` (default) or `json`.
    pub encoding: String,
    #[serde(with = "duration::go")]
    pub timeout: Duration,
    pub retry_on_failure: RetryConfig,
    pub sending_queue: QueueConfig,
    /// `auth: {authenticator: NAME}`: the config loader resolves it and passes the header in.
    pub auth: Option<AuthenticatorRef>,
}

impl Default for OtlpHttpExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            traces_endpoint: String::new(),
            tls: TlsClientConfig::default(),
            headers: BTreeMap::new(),
            compression: "gzip".into(),
            encoding: "proto".into(),
            timeout: Duration::from_secs(30),
            retry_on_failure: RetryConfig::default(),
            sending_queue: QueueConfig::default(),
            auth: None,
        }
    }
}

fn compression(value: &str, path: &str, errors: &mut Vec<ConfigError>) -> Compression {
    match value {
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        "none" | "" => Compression::None,
        other => {
            errors.push(ConfigError::new(
                format!("{path}.compression"),
                format!("unsupported compression `{other}`; use gzip, zstd or none"),
            ));
            Compression::None
        }
    }
}

/// Parses `headers`; `lower_case` names for gRPC metadata.
fn headers(
    headers: &BTreeMap<String, String>,
    lower_case: bool,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let header_name = if lower_case {
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        } else {
            HeaderName::from_bytes(name.as_bytes())
        };
        let Ok(header_name) = header_name else {
            errors.push(ConfigError::new(
                format!("{path}.headers.{name}"),
                format!("`{name}` is not a valid header name"),
            ));
            continue;
        };
        // gRPC metadata values must be visible ASCII; HTTP header values may be wider.
        let value_ok = HeaderValue::from_str(value)
            .ok()
            .filter(|v| !lower_case || v.to_str().is_ok());
        match value_ok {
            Some(value) => out.push((header_name, value)),
            None => errors.push(ConfigError::new(
                format!("{path}.headers.{name}"),
                format!("header `{name}` has a value that is not valid ASCII"),
            )),
        }
    }
    out
}

fn validate_retry_and_queue(
    retry: &RetryConfig,
    queue: &QueueConfig,
    path: &str,
    errors: &mut Vec<ConfigError>,
) {
    retry.validate(&format!("{path}.retry_on_failure"), errors);
    if queue.enabled && (queue.num_consumers == 0 || queue.queue_size == 0) {
        errors.push(ConfigError::new(
            format!("{path}.sending_queue"),
            "num_consumers and queue_size must be greater than 0",
        ));
    }
}

/// Keeps `value` only if no error was added since `before`.
fn if_valid<T>(errors: &[ConfigError], before: usize, value: T) -> Option<T> {
    (errors.len() == before).then_some(value)
}

impl OtlpExporterConfig {
    /// Everything but the endpoint: the settings the front tier and the cluster use as a
    /// template per peer (`protocol.otlp`).
    pub fn client_settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> GrpcClientSettings {
        validate_retry_and_queue(&self.retry_on_failure, &self.sending_queue, path, errors);
        GrpcClientSettings {
            insecure: self.tls.insecure,
            tls: self.tls.settings(&format!("{path}.tls"), errors),
            headers: headers(&self.headers, true, path, errors),
            compression: compression(&self.compression, path, errors),
            timeout: self.timeout,
        }
    }

    /// The settings of an `otlp` exporter whose `auth` the loader resolved to `auth`.
    pub fn settings_with_auth(
        &self,
        name: &str,
        path: &str,
        auth: Option<ClientAuth>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ExporterSettings> {
        let mut settings = self.settings(name, path, errors)?;
        if let (TransportSettings::Grpc(g), Some(auth)) = (&mut settings.transport, auth) {
            g.client.headers.push((auth.header, auth.value));
        }
        Some(settings)
    }

    /// The settings of an `otlp` exporter named `name`, or `None` with the errors added.
    pub fn settings(
        &self,
        name: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ExporterSettings> {
        let before = errors.len();
        let client = self.client_settings(path, errors);
        let uri = if self.endpoint.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.endpoint"),
                "endpoint is required",
            ));
            None
        } else {
            match grpc_uri(&self.endpoint, self.tls.insecure) {
                Ok(uri) => Some(uri),
                Err(_) => {
                    errors.push(ConfigError::new(
                        format!("{path}.endpoint"),
                        format!(
                            "endpoint `{}` must be host:port or http://host:port",
                            self.endpoint
                        ),
                    ));
                    None
                }
            }
        };
        let transport =
            TransportSettings::Grpc(super::settings::GrpcSettings { uri: uri?, client });
        if_valid(
            errors,
            before,
            ExporterSettings {
                name: name.to_string(),
                transport,
                retry: self.retry_on_failure.clone(),
                queue: self.sending_queue.clone(),
            },
        )
    }

    /// Checks a template whose endpoint the resolver fills in, and returns its settings.
    pub fn template_settings(
        &self,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> GrpcClientSettings {
        if !self.endpoint.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.endpoint"),
                "the endpoint is set per backend by the resolver; remove it",
            ));
        }
        if self.auth.is_some() {
            errors.push(ConfigError::new(
                format!("{path}.auth"),
                "auth is not supported on a per-backend template yet; use headers",
            ));
        }
        self.client_settings(path, errors)
    }
}

impl OtlpHttpExporterConfig {
    /// The URL traces are posted to.
    pub fn traces_url(&self) -> String {
        if !self.traces_endpoint.is_empty() {
            self.traces_endpoint.clone()
        } else {
            format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
        }
    }

    /// The settings of an `otlphttp` exporter whose `auth` the loader resolved to `auth`.
    pub fn settings_with_auth(
        &self,
        name: &str,
        path: &str,
        auth: Option<ClientAuth>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ExporterSettings> {
        let mut settings = self.settings(name, path, errors)?;
        if let (TransportSettings::Http(h), Some(auth)) = (&mut settings.transport, auth) {
            h.headers.push((auth.header, auth.value));
        }
        Some(settings)
    }

    /// The settings of an `otlphttp` exporter named `name`, or `None` with the errors added.
    pub fn settings(
        &self,
        name: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ExporterSettings> {
        let before = errors.len();
        let url = self.traces_url();
        let parsed = if self.endpoint.is_empty() && self.traces_endpoint.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.endpoint"),
                "endpoint is required",
            ));
            None
        } else {
            match url.parse::<http::Uri>() {
                Ok(uri) if uri.host().is_some() => Some(uri),
                _ => {
                    errors.push(ConfigError::new(
                        format!("{path}.endpoint"),
                        format!("`{url}` is not a valid URL (expected http://host:port)"),
                    ));
                    None
                }
            }
        };
        let encoding = match self.encoding.as_str() {
            "proto" => HttpEncoding::Protobuf,
            "json" => HttpEncoding::Json,
            other => {
                errors.push(ConfigError::new(
                    format!("{path}.encoding"),
                    format!("unsupported encoding `{other}`; use proto or json"),
                ));
                HttpEncoding::Protobuf
            }
        };
        validate_retry_and_queue(&self.retry_on_failure, &self.sending_queue, path, errors);
        let tls = self.tls.settings(&format!("{path}.tls"), errors);
        let headers = headers(&self.headers, false, path, errors);
        let compression = compression(&self.compression, path, errors);
        let transport = TransportSettings::Http(HttpSettings {
            url: parsed?,
            tls,
            headers,
            compression,
            encoding,
            timeout: self.timeout,
        });
        if_valid(
            errors,
            before,
            ExporterSettings {
                name: name.to_string(),
                transport,
                retry: self.retry_on_failure.clone(),
                queue: self.sending_queue.clone(),
            },
        )
    }
}

/// `exporters.file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileExporterConfig {
    pub path: String,
    /// `json` (default, one request per line) or `proto` (4-byte big-endian length + message).
    pub format: String,
}

impl Default for FileExporterConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            format: "json".into(),
        }
    }
}

/// Local exporters neither retry nor drop on a full queue: the pipeline waits for them.
fn local_exporter(name: &str, transport: TransportSettings) -> ExporterSettings {
    ExporterSettings {
        name: name.to_string(),
        transport,
        retry: RetryConfig {
            enabled: false,
            ..Default::default()
        },
        queue: QueueConfig::default(),
    }
}

impl FileExporterConfig {
    pub fn settings(
        &self,
        name: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ExporterSettings> {
        let before = errors.len();
        if self.path.is_empty() {
            errors.push(ConfigError::new(format!("{path}.path"), "path is required"));
        }
        let format = match self.format.as_str() {
            "json" => FileFormat::Json,
            "proto" => FileFormat::Protobuf,
            other => {
                errors.push(ConfigError::new(
                    format!("{path}.format"),
                    format!("unsupported format `{other}`; use json or proto"),
                ));
                FileFormat::Json
            }
        };
        let transport = TransportSettings::File(FileSettings {
            path: PathBuf::from(&self.path),
            format,
        });
        if_valid(errors, before, local_exporter(name, transport))
    }
}

/// `exporters.debug`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugExporterConfig {
    /// `basic` (a line per batch), `normal` (a line per span) or `detailed` (the batch as JSON).
    pub verbosity: String,
    pub sampling_initial: u64,
    pub sampling_thereafter: u64,
}

impl Default for DebugExporterConfig {
    fn default() -> Self {
        Self {
            verbosity: "basic".into(),
            sampling_initial: 2,
            sampling_thereafter: 1,
        }
    }
}

impl DebugExporterConfig {
    pub fn settings(
        &self,
        name: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ExporterSettings> {
        let verbosity = match self.verbosity.as_str() {
            "basic" => Verbosity::Basic,
            "normal" => Verbosity::Normal,
            "detailed" => Verbosity::Detailed,
            other => {
                errors.push(ConfigError::new(
                    format!("{path}.verbosity"),
                    format!("unknown verbosity `{other}`; use basic, normal or detailed"),
                ));
                return None;
            }
        };
        Some(local_exporter(name, TransportSettings::Debug(verbosity)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_verify_and_a_lone_cert_file_are_config_errors() {
        let mut errors = vec![];
        TlsClientConfig {
            insecure_skip_verify: true,
            cert_file: "c.pem".into(),
            ..Default::default()
        }
        .settings("exporters.otlp.tls", &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].path, "exporters.otlp.tls.insecure_skip_verify");
    }

    #[test]
    fn a_template_with_an_endpoint_is_refused() {
        let mut errors = vec![];
        let template = OtlpExporterConfig {
            endpoint: "x:4317".into(),
            tls: TlsClientConfig {
                insecure: true,
                ..Default::default()
            },
            ..Default::default()
        };
        template.template_settings("exporters.loadbalancing.protocol.otlp", &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].path,
            "exporters.loadbalancing.protocol.otlp.endpoint"
        );
    }

    #[test]
    fn strings_become_typed_settings() {
        let mut errors = vec![];
        let config = OtlpHttpExporterConfig {
            endpoint: "http://jaeger:4318/".into(),
            compression: "zstd".into(),
            encoding: "json".into(),
            ..Default::default()
        };
        let settings = config.settings("otlphttp", "e", &mut errors).unwrap();
        let TransportSettings::Http(http) = settings.transport else {
            panic!("not an HTTP transport")
        };
        assert_eq!(http.url.to_string(), "http://jaeger:4318/v1/traces");
        assert_eq!(http.compression, Compression::Zstd);
        assert_eq!(http.encoding, HttpEncoding::Json);
        let bad = OtlpHttpExporterConfig {
            endpoint: "http://jaeger:4318".into(),
            compression: "br".into(),
            encoding: "xml".into(),
            ..Default::default()
        };
        assert!(bad.settings("otlphttp", "e", &mut errors).is_none());
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["e.encoding", "e.compression"]);
    }
}
