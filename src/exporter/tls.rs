//! TLS to backends, per the Collector's `tls` block: system-independent Mozilla roots
//! (webpki-roots) or `ca_file`, an optional client certificate (`cert_file` + `key_file`) for
//! mutual TLS, and `server_name_override`. Certificates are read when the exporter starts, so a
//! missing or malformed file stops start-up with its path.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::TlsClientConfig;
use crate::config::ConfigError;

impl TlsClientConfig {
    /// Checks what can be checked without reading files.
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
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
    }
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// The tonic TLS settings for a gRPC exporter talking to `host`.
pub fn grpc_client_tls(tls: &TlsClientConfig, host: &str) -> Result<ClientTlsConfig, String> {
    let domain = if tls.server_name_override.is_empty() {
        host
    } else {
        &tls.server_name_override
    };
    let mut config = ClientTlsConfig::new().domain_name(domain.to_string());
    config = if tls.ca_file.is_empty() {
        config.with_webpki_roots()
    } else {
        config.ca_certificate(Certificate::from_pem(read(&tls.ca_file)?))
    };
    if !tls.cert_file.is_empty() {
        config = config.identity(Identity::from_pem(
            read(&tls.cert_file)?,
            read(&tls.key_file)?,
        ));
    }
    Ok(config)
}

/// The rustls client settings for an HTTPS exporter.
pub fn rustls_client_config(tls: &TlsClientConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if tls.ca_file.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        let pem = read(&tls.ca_file)?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: {e}", tls.ca_file))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", tls.ca_file))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no certificates found", tls.ca_file));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    if tls.cert_file.is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let certs = CertificateDer::pem_slice_iter(&read(&tls.cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", tls.cert_file))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key_file)?)
        .map_err(|e| format!("{}: {e}", tls.key_file))?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_temp(contents: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        file
    }

    #[test]
    fn a_ca_file_becomes_the_only_trust_root() {
        let cert = rcgen::generate_simple_self_signed(vec!["backend.test".into()]).unwrap();
        let ca = write_temp(&cert.cert.pem());
        let tls = TlsClientConfig {
            ca_file: ca.path().display().to_string(),
            ..Default::default()
        };
        assert!(rustls_client_config(&tls).is_ok());
        assert!(grpc_client_tls(&tls, "backend.test").is_ok());
    }

    #[test]
    fn unreadable_or_empty_certificate_files_name_the_file() {
        let tls = TlsClientConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..Default::default()
        };
        assert!(rustls_client_config(&tls)
            .unwrap_err()
            .contains("/nonexistent/ca.pem"));
        let empty = write_temp("not a certificate");
        let tls = TlsClientConfig {
            ca_file: empty.path().display().to_string(),
            ..Default::default()
        };
        assert!(rustls_client_config(&tls)
            .unwrap_err()
            .contains("no certificates"));
    }

    #[test]
    fn skip_verify_and_a_lone_cert_file_are_config_errors() {
        let mut errors = vec![];
        TlsClientConfig {
            insecure_skip_verify: true,
            cert_file: "c.pem".into(),
            ..Default::default()
        }
        .validate("exporters.otlp.tls", &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].path, "exporters.otlp.tls.insecure_skip_verify");
    }
}
