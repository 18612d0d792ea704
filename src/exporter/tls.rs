//! TLS to backends, from the Collector's `tls` block ([`TlsSettings`]): system-independent Mozilla roots
//! (webpki-roots) or `ca_file`, an optional client certificate (`cert_file` + `key_file`) for
//! mutual TLS, and `server_name_override`. Certificates are read when the exporter starts, so a
//! missing or malformed file stops start-up with its path.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use std::path::Path;

use super::settings::TlsSettings;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The tonic TLS settings for a gRPC exporter talking to `host`.
pub fn grpc_client_tls(tls: &TlsSettings, host: &str) -> Result<ClientTlsConfig, String> {
    let domain = tls.server_name_override.as_deref().unwrap_or(host);
    let mut config = ClientTlsConfig::new().domain_name(domain.to_string());
    config = match &tls.ca_file {
        None => config.with_webpki_roots(),
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
    };
    if let Some((cert, key)) = &tls.client_cert {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(config)
}

/// The rustls client settings for an HTTPS exporter.
pub fn rustls_client_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(ca) => {
            let pem = read(ca)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificates found", ca.display()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let Some((cert_file, key_file)) = &tls.client_cert else {
        return Ok(builder.with_no_client_auth());
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
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
        let tls = TlsSettings {
            ca_file: Some(ca.path().to_path_buf()),
            ..Default::default()
        };
        assert!(rustls_client_config(&tls).is_ok());
        assert!(grpc_client_tls(&tls, "backend.test").is_ok());
    }

    #[test]
    fn unreadable_or_empty_certificate_files_name_the_file() {
        let tls = TlsSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        assert!(rustls_client_config(&tls)
            .unwrap_err()
            .contains("/nonexistent/ca.pem"));
        let empty = write_temp("not a certificate");
        let tls = TlsSettings {
            ca_file: Some(empty.path().to_path_buf()),
            ..Default::default()
        };
        assert!(rustls_client_config(&tls)
            .unwrap_err()
            .contains("no certificates"));
    }
}
