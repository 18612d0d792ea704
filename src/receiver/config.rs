//! `receivers.otlp` in the Collector's shape, validated into [`ReceiverSettings`].

use serde::Deserialize;

use super::tls::TlsServerConfig;
use super::{DoorSettings, GrpcServerSettings, HttpServerSettings, ReceiverSettings};
use crate::auth::AuthenticatorRef;
use crate::otlp::InvalidUtf8;
use crate::yaml::{check_listen_endpoint, null_as_default, ConfigError};

/// `receivers.otlp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    pub protocols: ProtocolsConfig,
    /// tailgate extension: what to do with a request whose strings are not valid UTF-8
    /// (`repair`, the default: invalid sequences become U+FFFD; `refuse`: InvalidArgument / 400).
    pub invalid_utf8: InvalidUtf8Config,
    /// tailgate extension: request bodies (as received and decoded) held at once, in MiB, over
    /// both protocols; past it clients are told to retry (UNAVAILABLE / 503). Default 256.
    pub max_in_flight_mib: Option<u64>,
}

/// `receivers.otlp.invalid_utf8`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InvalidUtf8Config {
    #[default]
    Repair,
    Refuse,
}

/// `receivers.otlp.protocols`: a protocol is enabled by being present (even empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolsConfig {
    #[serde(deserialize_with = "null_as_default")]
    pub grpc: Option<GrpcServerConfig>,
    #[serde(deserialize_with = "null_as_default")]
    pub http: Option<HttpServerConfig>,
}

/// `receivers.otlp.protocols.grpc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcServerConfig {
    pub endpoint: String,
    /// Largest accepted message, in MiB (after decompression). Default 4.
    pub max_recv_msg_size_mib: u64,
    /// Accepted for compatibility; tonic's transport is always TCP.
    pub transport: String,
    /// `auth: {authenticator: NAME}`: resolved against `extensions` by the config loader.
    pub auth: Option<AuthenticatorRef>,
    pub tls: Option<TlsServerConfig>,
}

impl Default for GrpcServerConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:4317".into(),
            max_recv_msg_size_mib: 4,
            transport: "tcp".into(),
            auth: None,
            tls: None,
        }
    }
}

/// `receivers.otlp.protocols.http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpServerConfig {
    pub endpoint: String,
    /// Largest accepted body in bytes (after decompression). Default 20 MiB, as the Collector.
    pub max_request_body_size: u64,
    /// tailgate extension: the same limit in MiB, like the gRPC key; the smaller limit wins.
    pub max_recv_msg_size_mib: Option<u64>,
    pub traces_url_path: String,
    /// `auth: {authenticator: NAME}`: resolved against `extensions` by the config loader.
    pub auth: Option<AuthenticatorRef>,
    pub tls: Option<TlsServerConfig>,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:4318".into(),
            max_request_body_size: 20 * 1024 * 1024,
            max_recv_msg_size_mib: None,
            traces_url_path: "/v1/traces".into(),
            auth: None,
            tls: None,
        }
    }
}

impl HttpServerConfig {
    fn body_limit(&self) -> usize {
        let mib = self
            .max_recv_msg_size_mib
            .map_or(u64::MAX, |m| m * 1024 * 1024);
        self.max_request_body_size.min(mib) as usize
    }
}

impl OtlpReceiverConfig {
    /// The settings of the receiver named `name` at `path`, or `None` with the errors added.
    pub fn settings(
        &self,
        name: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ReceiverSettings> {
        let before = errors.len();
        let p = &self.protocols;
        if p.grpc.is_none() && p.http.is_none() {
            errors.push(ConfigError::new(
                format!("{path}.protocols"),
                "enable at least one of grpc and http",
            ));
        }
        if let Some(g) = &p.grpc {
            check_listen_endpoint(
                &g.endpoint,
                &format!("{path}.protocols.grpc.endpoint"),
                errors,
            );
            if g.max_recv_msg_size_mib == 0 {
                errors.push(ConfigError::new(
                    format!("{path}.protocols.grpc.max_recv_msg_size_mib"),
                    "must be greater than 0",
                ));
            }
            if g.transport != "tcp" {
                errors.push(ConfigError::new(
                    format!("{path}.protocols.grpc.transport"),
                    format!("transport `{}` is not supported; use tcp", g.transport),
                ));
            }
        }
        if let Some(h) = &p.http {
            check_listen_endpoint(
                &h.endpoint,
                &format!("{path}.protocols.http.endpoint"),
                errors,
            );
            if !h.traces_url_path.starts_with('/') {
                errors.push(ConfigError::new(
                    format!("{path}.protocols.http.traces_url_path"),
                    "must start with /",
                ));
            }
        }
        let in_flight_mib = self
            .max_in_flight_mib
            .unwrap_or(super::DEFAULT_MAX_IN_FLIGHT_MIB as u64);
        let largest_request = p
            .grpc
            .iter()
            .map(|g| g.max_recv_msg_size_mib * 1024 * 1024)
            .chain(p.http.iter().map(|h| h.body_limit() as u64))
            .max()
            .unwrap_or(0);
        if in_flight_mib.saturating_mul(1024 * 1024) < largest_request {
            errors.push(ConfigError::new(
                format!("{path}.max_in_flight_mib"),
                format!(
                    "{in_flight_mib} MiB is less than the largest request a protocol accepts \
                     ({largest_request} bytes); such a request could never be taken"
                ),
            ));
        }
        let tls = |tls: Option<&TlsServerConfig>, at: &str, errors: &mut Vec<ConfigError>| match tls
        {
            None => Some(None),
            Some(t) => t
                .settings(&format!("{path}.protocols.{at}.tls"), errors)
                .map(Some),
        };
        let grpc_tls = tls(p.grpc.as_ref().and_then(|g| g.tls.as_ref()), "grpc", errors);
        let http_tls = tls(p.http.as_ref().and_then(|h| h.tls.as_ref()), "http", errors);
        if errors.len() > before {
            return None;
        }
        Some(ReceiverSettings {
            name: name.to_string(),
            grpc: p.grpc.as_ref().map(|g| GrpcServerSettings {
                endpoint: g.endpoint.clone(),
                max_message_bytes: (g.max_recv_msg_size_mib * 1024 * 1024) as usize,
                auth: None,
                tls: grpc_tls.clone().flatten(),
            }),
            http: p.http.as_ref().map(|h| HttpServerSettings {
                endpoint: h.endpoint.clone(),
                traces_path: h.traces_url_path.clone(),
                body_limit: h.body_limit(),
                auth: None,
                tls: http_tls.clone().flatten(),
            }),
            door: DoorSettings {
                invalid_utf8: match self.invalid_utf8 {
                    InvalidUtf8Config::Repair => InvalidUtf8::Repair,
                    InvalidUtf8Config::Refuse => InvalidUtf8::Refuse,
                },
                max_in_flight_bytes: (in_flight_mib.saturating_mul(1024 * 1024))
                    .min(usize::MAX as u64) as usize,
            },
        })
    }
}
