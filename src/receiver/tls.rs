//! TLS on the receivers: the Collector's server `tls` block on `protocols.grpc` and
//! `protocols.http` ([`TlsServerConfig`]), validated into [`ServerTlsSettings`], and the accept
//! loop that turns a TCP listener into a stream of TLS connections.
//!
//! The certificate and key come from files (`cert_file`, `key_file`) or inline (`cert_pem`,
//! `key_pem`); `client_ca_file` turns on mutual TLS (a client without a certificate signed by
//! that CA fails the handshake). With `reload_interval` the files are read again on that period
//! and new connections get the new certificate; connections already open keep theirs, and a
//! read that fails keeps the previous certificate (logged, rate-limited). The config is built
//! once at validation, so a missing or malformed file stops start-up naming its YAML path.
//!
//! Handshakes run in their own tasks, bounded by a timeout, so a slow or silent client never
//! holds up the accept loop; a failed handshake is counted
//! (`tailgate_receiver_tls_handshake_failures`).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{catalog, LogEvery};
use crate::yaml::{duration, ConfigError};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the client CA is re-read with `client_ca_file_reload` and no `reload_interval`.
const CLIENT_CA_RELOAD: Duration = Duration::from_secs(60);

/// `protocols.grpc.tls` / `protocols.http.tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsServerConfig {
    pub cert_file: String,
    pub key_file: String,
    /// The certificate (chain) inline, instead of `cert_file`.
    pub cert_pem: String,
    /// The key inline, instead of `key_file`.
    pub key_pem: String,
    /// CA(s) client certificates must be signed by: mutual TLS.
    pub client_ca_file: String,
    /// Re-read `client_ca_file` (every `reload_interval`, or every minute without one).
    pub client_ca_file_reload: bool,
    /// `1.2` (default) or `1.3`. TLS 1.0 and 1.1 are refused.
    pub min_version: String,
    /// `1.2` or `1.3` (default: the newest).
    pub max_version: String,
    /// Re-read the certificate, key and client CA files on this period.
    #[serde(with = "duration::go_opt")]
    pub reload_interval: Option<Duration>,
}

/// Where a PEM comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    Inline(String),
}

impl std::fmt::Debug for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemSource::File(p) => write!(f, "File({})", p.display()),
            // Inline keys are secrets.
            PemSource::Inline(_) => write!(f, "Inline(<redacted>)"),
        }
    }
}

impl PemSource {
    fn read(&self, what: &str) -> Result<Vec<u8>, String> {
        match self {
            PemSource::File(p) => {
                std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            }
            PemSource::Inline(pem) => {
                if pem.trim().is_empty() {
                    Err(format!("{what} is empty"))
                } else {
                    Ok(pem.as_bytes().to_vec())
                }
            }
        }
    }

    fn name(&self, what: &str) -> String {
        match self {
            PemSource::File(p) => p.display().to_string(),
            PemSource::Inline(_) => what.to_string(),
        }
    }
}

/// A TLS protocol version rustls speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V12,
    V13,
}

/// The server `tls` block, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    pub cert: PemSource,
    pub key: PemSource,
    pub client_ca: Option<PathBuf>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// When the files are read again; `None`: read once.
    pub reload_interval: Option<Duration>,
}

fn version(
    value: &str,
    default: TlsVersion,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> TlsVersion {
    match value {
        "" => default,
        "1.2" => TlsVersion::V12,
        "1.3" => TlsVersion::V13,
        "1.0" | "1.1" => {
            errors.push(ConfigError::new(
                path,
                format!("TLS {value} is not supported by tailgate (it is deprecated and rustls does not speak it); use 1.2 or 1.3"),
            ));
            default
        }
        other => {
            errors.push(ConfigError::new(
                path,
                format!("unknown TLS version `{other}`; use 1.2 or 1.3"),
            ));
            default
        }
    }
}

impl TlsServerConfig {
    /// The settings at `path` (`receivers.otlp.protocols.grpc.tls`), with the certificate
    /// loaded once to check it; `None` with the errors added.
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<ServerTlsSettings> {
        let before = errors.len();
        let source = |file: &str, pem: &str, what: &str, errors: &mut Vec<ConfigError>| match (
            file.is_empty(),
            pem.is_empty(),
        ) {
            (false, true) => Some(PemSource::File(PathBuf::from(file))),
            (true, false) => Some(PemSource::Inline(pem.to_string())),
            (true, true) => {
                errors.push(ConfigError::new(
                    path,
                    format!("a server certificate needs {what}_file or {what}_pem"),
                ));
                None
            }
            (false, false) => {
                errors.push(ConfigError::new(
                    path,
                    format!("set one of {what}_file and {what}_pem, not both"),
                ));
                None
            }
        };
        let cert = source(&self.cert_file, &self.cert_pem, "cert", errors);
        let key = source(&self.key_file, &self.key_pem, "key", errors);
        let min_version = version(
            &self.min_version,
            TlsVersion::V12,
            &format!("{path}.min_version"),
            errors,
        );
        let max_version = version(
            &self.max_version,
            TlsVersion::V13,
            &format!("{path}.max_version"),
            errors,
        );
        if min_version > max_version {
            errors.push(ConfigError::new(
                format!("{path}.max_version"),
                "max_version is below min_version",
            ));
        }
        if self.reload_interval == Some(Duration::ZERO) {
            errors.push(ConfigError::new(
                format!("{path}.reload_interval"),
                "reload_interval must be greater than 0 (leave it out to read the files once)",
            ));
        }
        let client_ca =
            (!self.client_ca_file.is_empty()).then(|| PathBuf::from(&self.client_ca_file));
        let reload_interval = self.reload_interval.or_else(|| {
            (self.client_ca_file_reload && client_ca.is_some()).then_some(CLIENT_CA_RELOAD)
        });
        if errors.len() > before {
            return None;
        }
        let settings = ServerTlsSettings {
            cert: cert?,
            key: key?,
            client_ca,
            min_version,
            max_version,
            reload_interval,
        };
        if let Err(e) = server_config(&settings, &[]) {
            errors.push(ConfigError::new(path, e));
            return None;
        }
        Some(settings)
    }
}

/// The rustls server config for `settings`, the files read now.
pub fn server_config(
    settings: &ServerTlsSettings,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, String> {
    let cert_pem = settings.cert.read("cert_pem")?;
    let cert_name = settings.cert.name("cert_pem");
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_name}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_name}: no certificate found"));
    }
    let key_name = settings.key.name("key_pem");
    let key = PrivateKeyDer::from_pem_slice(&settings.key.read("key_pem")?)
        .map_err(|e| format!("{key_name}: no private key found ({e})"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::V12, &rustls::version::TLS12),
        (TlsVersion::V13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (settings.min_version..=settings.max_version).contains(v))
    .map(|(_, v)| v)
    .collect();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificates found", ca.display()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{cert_name} and {key_name} do not make a certificate: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The server config new connections get; replaced by the reloader.
struct Current(RwLock<Arc<rustls::ServerConfig>>);

impl Current {
    fn get(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set(&self, config: rustls::ServerConfig) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}

/// An accepted TLS connection.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Accepts TCP connections on `listener` and hands on those that complete a TLS handshake,
/// until `shutdown`. With `reload_interval`, a second task re-reads the files on that period.
pub fn accept_tls(
    listener: TcpListener,
    settings: &ServerTlsSettings,
    alpn: &'static [&'static [u8]],
    transport: &'static str,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<TlsConn>, String> {
    let current = Arc::new(Current(RwLock::new(Arc::new(server_config(
        settings, alpn,
    )?))));
    if let Some(interval) = settings.reload_interval {
        tokio::spawn(reload(
            Arc::clone(&current),
            settings.clone(),
            alpn,
            interval,
            shutdown.clone(),
            None,
        ));
    }
    let (tx, rx) = mpsc::channel(64);
    let failures = catalog::RECEIVER_TLS_HANDSHAKE_FAILURES.counter(&[transport]);
    let log = Arc::new(LogEvery::new(Duration::from_secs(10)));
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, as hyper does.
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(current.get());
            let (tx, failures, log) = (tx.clone(), failures.clone(), Arc::clone(&log));
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(TlsConn(tls)).await;
                    }
                    outcome => {
                        failures.increment(1);
                        if log.ready() {
                            let why = match outcome {
                                Ok(Err(e)) => e.to_string(),
                                _ => "handshake timed out".to_string(),
                            };
                            tracing::warn!(transport, "TLS handshake failed: {why} (counted in tailgate_receiver_tls_handshake_failures)");
                        }
                    }
                }
            });
        }
    });
    Ok(rx)
}

/// Re-reads the files every `interval` and swaps the new config in; a failure keeps the old one.
/// `reloaded` (tests) is told after each attempt.
async fn reload(
    current: Arc<Current>,
    settings: ServerTlsSettings,
    alpn: &'static [&'static [u8]],
    interval: Duration,
    shutdown: CancellationToken,
    reloaded: Option<mpsc::UnboundedSender<bool>>,
) {
    let log = LogEvery::new(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let ok = match server_config(&settings, alpn) {
            Ok(config) => {
                current.set(config);
                true
            }
            Err(e) => {
                if log.ready() {
                    tracing::warn!("TLS certificate reload failed, keeping the previous one: {e}");
                }
                false
            }
        };
        if let Some(r) = &reloaded {
            let _ = r.send(ok);
        }
    }
}

/// An axum listener over [`accept_tls`]'s connections.
pub struct TlsListener {
    pub connections: mpsc::Receiver<TlsConn>,
    pub local: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(conn) => {
                let addr = conn.0.get_ref().0.peer_addr().unwrap_or(self.local);
                (conn, addr)
            }
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap()
    }

    fn parse(yaml: &str) -> Result<Option<ServerTlsSettings>, Vec<ConfigError>> {
        let config: TlsServerConfig = crate::yaml::parse_block(
            "receivers.otlp.protocols.grpc.tls",
            serde_yaml::from_str(yaml).unwrap(),
        )
        .map_err(|e| vec![e])?;
        let mut errors = vec![];
        let s = config.settings("receivers.otlp.protocols.grpc.tls", &mut errors);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn inline_pem_and_files_both_load_and_versions_are_checked() {
        let c = cert("localhost");
        let dir = tempfile::tempdir().unwrap();
        let (cf, kf) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cf, c.cert.pem()).unwrap();
        std::fs::write(&kf, c.signing_key.serialize_pem()).unwrap();
        let s = parse(&format!(
            "{{cert_file: {}, key_file: {}, min_version: '1.3', reload_interval: 1m}}",
            cf.display(),
            kf.display()
        ))
        .unwrap()
        .unwrap();
        assert_eq!(s.min_version, TlsVersion::V13);
        assert_eq!(s.reload_interval, Some(Duration::from_secs(60)));
        let inline = serde_json::json!({
            "cert_pem": c.cert.pem(),
            "key_pem": c.signing_key.serialize_pem(),
        });
        let s = parse(&inline.to_string()).unwrap().unwrap();
        assert!(matches!(s.cert, PemSource::Inline(_)));
        assert!(!format!("{s:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn bad_tls_blocks_are_errors_at_their_path() {
        let paths = |yaml: &str| -> Vec<String> {
            parse(yaml)
                .unwrap_err()
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect()
        };
        let e = paths("{cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}");
        assert!(
            e[0].starts_with("receivers.otlp.protocols.grpc.tls: cannot read /nonexistent/c.pem"),
            "{e:?}"
        );
        let e = paths("{cert_file: a, key_file: b, min_version: '1.1'}");
        assert!(
            e[0].starts_with(
                "receivers.otlp.protocols.grpc.tls.min_version: TLS 1.1 is not supported"
            ),
            "{e:?}"
        );
        let e = paths("{cert_file: a, key_file: b, min_version: '1.3', max_version: '1.2'}");
        assert!(
            e[0].starts_with("receivers.otlp.protocols.grpc.tls.max_version"),
            "{e:?}"
        );
        let e = paths("{key_file: b}");
        assert!(e[0].contains("cert_file or cert_pem"), "{e:?}");
        let e = parse("{cert_file: a, key_file: b, cipher_suites: [x]}").unwrap_err();
        assert_eq!(e[0].path, "receivers.otlp.protocols.grpc.tls.cipher_suites");
    }

    /// The reloader swaps in the new certificate when the files change, on the paused clock.
    #[tokio::test(start_paused = true)]
    async fn reload_interval_picks_up_a_rotated_certificate() {
        let (a, b) = (cert("a.test"), cert("b.test"));
        let dir = tempfile::tempdir().unwrap();
        let (cf, kf) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cf, a.cert.pem()).unwrap();
        std::fs::write(&kf, a.signing_key.serialize_pem()).unwrap();
        let settings = ServerTlsSettings {
            cert: PemSource::File(cf.clone()),
            key: PemSource::File(kf.clone()),
            client_ca: None,
            min_version: TlsVersion::V12,
            max_version: TlsVersion::V13,
            reload_interval: Some(Duration::from_secs(30)),
        };
        let current = Arc::new(Current(RwLock::new(Arc::new(
            server_config(&settings, &[]).unwrap(),
        ))));
        let fingerprint = |current: &Current| format!("{:p}", Arc::as_ptr(&current.get()));
        let first = fingerprint(&current);
        let (tx, mut reloaded) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(reload(
            Arc::clone(&current),
            settings,
            &[],
            Duration::from_secs(30),
            stop.clone(),
            Some(tx),
        ));
        // A broken file keeps the old certificate.
        std::fs::write(&cf, "garbage").unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(reloaded.recv().await, Some(false));
        assert_eq!(fingerprint(&current), first);
        std::fs::write(&cf, b.cert.pem()).unwrap();
        std::fs::write(&kf, b.signing_key.serialize_pem()).unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(reloaded.recv().await, Some(true));
        assert_ne!(fingerprint(&current), first);
        stop.cancel();
    }
}
