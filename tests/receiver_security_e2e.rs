//! End to end: the receivers' security, as production gateway configs set it up. The
//! `bearertokenauth` and `basicauth` extensions on both protocols (refused requests counted and
//! never forwarded, secrets never in the logs), the exporter side of `auth`, and receiver TLS
//! (server certificates, mTLS, rotation by `reload_interval`) with certificates the tests make.

mod support;

use std::time::Duration;

use base64::Engine;
use support::{free_port, otlp, Gateway, RecordingBackend};
use tonic::metadata::MetadataValue;

const WAIT: Duration = Duration::from_secs(20);

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Sends one span over gRPC with an optional `authorization` value.
async fn grpc_send(port: u16, auth: Option<&str>, name: &str, n: u64) -> Result<(), tonic::Status> {
    let mut client = otlp::grpc_client(&format!("http://127.0.0.1:{port}")).await;
    let mut request = tonic::Request::new(otlp::request(
        "api",
        vec![otlp::span(
            otlp::trace_id(n as u128),
            otlp::span_id(n),
            name,
        )],
    ));
    if let Some(auth) = auth {
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::try_from(auth).unwrap());
    }
    client.export(request).await.map(|_| ())
}

/// Posts one span over HTTP (protobuf) with an optional `Authorization` value; the status.
async fn http_send(port: u16, auth: Option<&str>, name: &str, n: u64) -> u16 {
    use prost::Message;
    let body = otlp::request(
        "api",
        vec![otlp::span(
            otlp::trace_id(n as u128),
            otlp::span_id(n),
            name,
        )],
    )
    .encode_to_vec();
    let mut headers = vec![("content-type", "application/x-protobuf")];
    if let Some(auth) = auth {
        headers.push(("authorization", auth));
    }
    support::http::post(
        &format!("http://127.0.0.1:{port}/v1/traces"),
        &headers,
        body,
        WAIT,
    )
    .await
    .unwrap()
    .status
    .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_and_basic_auth_refuse_unauthenticated_requests_on_both_protocols() {
    let backend = RecordingBackend::start_http().await;
    let (g1, h1, g2, h2, health, metrics) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let alice = bcrypt::hash("alice-SECRET", 4).unwrap();
    let config = format!(
        r#"
receivers:
  otlp/a:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{g1}", auth: {{authenticator: bearertokenauth}}}}
      http: {{endpoint: "127.0.0.1:{h1}", auth: {{authenticator: basicauth/server}}}}
  otlp/b:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{g2}", auth: {{authenticator: basicauth/server}}}}
      http: {{endpoint: "127.0.0.1:{h2}", auth: {{authenticator: bearertokenauth}}}}
exporters:
  otlphttp:
    endpoint: {backend}
    compression: none
    auth: {{authenticator: basicauth/client}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
  bearertokenauth: {{token: "token-SECRET"}}
  basicauth/server:
    htpasswd:
      inline: |
        alice:{alice}
        bob:bob-SECRET
  basicauth/client:
    client_auth: {{username: gateway, password: "out-SECRET"}}
service:
  extensions: [health_check, bearertokenauth, basicauth/server, basicauth/client]
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
  pipelines:
    traces:
      receivers: [otlp/a, otlp/b]
      exporters: [otlphttp]
"#,
        backend = backend.endpoint()
    );
    let gateway = Gateway::start(&config).await;

    // gRPC with a bearer token.
    let refused = grpc_send(g1, None, "no token", 1).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let refused = grpc_send(g1, Some("Bearer token-WRONG"), "bad token", 2)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    grpc_send(g1, Some("Bearer token-SECRET"), "grpc bearer", 3)
        .await
        .unwrap();
    // gRPC with basic auth (a bcrypt and a plain htpasswd entry).
    grpc_send(g2, Some(&basic("alice", "alice-SECRET")), "grpc basic", 4)
        .await
        .unwrap();
    let refused = grpc_send(g2, Some(&basic("alice", "bob-SECRET")), "wrong pw", 5)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    // HTTP with basic auth and with a bearer token.
    assert_eq!(http_send(h1, None, "no basic", 6).await, 401);
    assert_eq!(
        http_send(h1, Some(&basic("bob", "bob-SECRET")), "http basic", 7).await,
        200
    );
    assert_eq!(
        http_send(h2, Some("Bearer token-SECRET"), "http bearer", 8).await,
        200
    );
    assert_eq!(
        http_send(h2, Some("Bearer nope"), "bad bearer", 9).await,
        401
    );

    backend.wait_for_spans(4, WAIT).await.unwrap();
    let mut names: Vec<String> = backend
        .spans()
        .iter()
        .map(|s| s.span.name.clone())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["grpc basic", "grpc bearer", "http basic", "http bearer"]
    );
    // The exporter authenticates to the backend with its own credentials.
    for request in backend.requests() {
        assert_eq!(
            request.header("authorization"),
            Some(basic("gateway", "out-SECRET").as_str())
        );
    }
    // Counted per receiver and transport.
    let refused = |receiver: &'static str, transport: &'static str| {
        let gateway = &gateway;
        async move {
            gateway
                .metric(
                    "tailgate_receiver_unauthenticated_requests",
                    &[("receiver", receiver), ("transport", transport)],
                )
                .await
        }
    };
    assert_eq!(refused("otlp/a", "grpc").await, 2.0);
    assert_eq!(refused("otlp/b", "grpc").await, 1.0);
    assert_eq!(refused("otlp/a", "http").await, 1.0);
    assert_eq!(refused("otlp/b", "http").await, 1.0);
    let metrics = gateway.metrics().await;
    let logs = gateway.logs();
    assert!(logs.contains("refused a request"), "{logs}");
    for text in [&metrics, &logs] {
        assert!(!text.contains("SECRET"), "a secret leaked:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticator_that_is_not_defined_or_not_enabled_stops_start_up_naming_the_path() {
    let (grpc, health) = (free_port(), free_port());
    let config = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}", auth: {{authenticator: bearertokenauth}}}}
      http: {{endpoint: "127.0.0.1:{http}", auth: {{authenticator: oidc}}}}
exporters:
  debug:
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
  bearertokenauth: {{token: "t"}}
service:
  extensions: [health_check]
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [debug]}}
"#,
        http = free_port(),
        metrics = free_port()
    );
    let (status, logs) = Gateway::run_until_exit(&config, WAIT).await;
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains("receivers.otlp.protocols.grpc.auth.authenticator: authenticator `bearertokenauth` is not enabled"),
        "{logs}"
    );
    assert!(
        logs.contains(
            "receivers.otlp.protocols.http.auth.authenticator: authenticator `oidc` is not defined"
        ),
        "{logs}"
    );
}

// ---------------------------------------------------------------------------------------------
// TLS on the receivers.

struct Pem {
    cert: String,
    key: String,
}

fn self_signed(name: &str) -> Pem {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    Pem {
        cert: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
    }
}

/// A TLS gRPC client trusting `ca` (and presenting `identity` if given).
async fn tls_grpc_send(
    port: u16,
    ca: &str,
    identity: Option<&Pem>,
    name: &str,
    n: u64,
) -> Result<(), String> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = TraceServiceClient::new(channel);
    client
        .export(otlp::request(
            "api",
            vec![otlp::span(
                otlp::trace_id(n as u128),
                otlp::span_id(n),
                name,
            )],
        ))
        .await
        .map(|_| ())
        .map_err(|e| format!("export: {e}"))
}

/// An HTTPS OTLP post trusting `ca`; the status, or the error.
async fn tls_http_send(port: u16, ca: &str, name: &str, n: u64) -> Result<u16, String> {
    use bytes::Bytes;
    use http_body_util::Full;
    use prost::Message;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(https);
    let body = otlp::request(
        "api",
        vec![otlp::span(
            otlp::trace_id(n as u128),
            otlp::span_id(n),
            name,
        )],
    )
    .encode_to_vec();
    let request = http::Request::post(format!("https://localhost:{port}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    Ok(response.status().as_u16())
}

/// A pass-through gateway to `backend` with `grpc_extra`/`http_extra` under each protocol.
fn tls_gateway_config(
    backend: &RecordingBackend,
    ports: (u16, u16, u16),
    grpc_extra: &str,
    http_extra: &str,
) -> String {
    let (grpc, http, health) = ports;
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "127.0.0.1:{grpc}"
{grpc_extra}
      http:
        endpoint: "127.0.0.1:{http}"
{http_extra}
exporters:
  otlphttp:
    endpoint: {backend}
    compression: none
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  extensions: [health_check]
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlphttp]}}
"#,
        backend = backend.endpoint(),
        metrics = free_port()
    )
}

fn tls_block(cert: &std::path::Path, key: &std::path::Path, extra: &str) -> String {
    format!(
        "        tls:\n          cert_file: {}\n          key_file: {}\n{extra}",
        cert.display(),
        key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_receivers_serve_grpc_and_http_and_refuse_plain_text_clients() {
    let server = self_signed("localhost");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &server.cert).unwrap();
    std::fs::write(&key, &server.key).unwrap();
    let backend = RecordingBackend::start_http().await;
    let ports = (free_port(), free_port(), free_port());
    // gRPC from files, HTTP from the same certificate inline.
    let inline = format!(
        "        tls:\n          cert_pem: |\n{}\n          key_pem: |\n{}\n          min_version: \"1.3\"\n",
        indent(&server.cert, 12),
        indent(&server.key, 12)
    );
    let config = tls_gateway_config(&backend, ports, &tls_block(&cert, &key, ""), &inline);
    let _gateway = Gateway::start(&config).await;

    tls_grpc_send(ports.0, &server.cert, None, "grpc over tls", 1)
        .await
        .unwrap();
    assert_eq!(
        tls_http_send(ports.1, &server.cert, "http over tls", 2).await,
        Ok(200)
    );
    // Plain text is not served.
    assert!(grpc_send(ports.0, None, "plain grpc", 3).await.is_err());
    assert!(support::http::post(
        &format!("http://127.0.0.1:{}/v1/traces", ports.1),
        &[("content-type", "application/x-protobuf")],
        vec![],
        Duration::from_secs(5),
    )
    .await
    .is_err());
    // A client that does not trust the certificate fails the handshake.
    let other = self_signed("localhost");
    assert!(tls_grpc_send(ports.0, &other.cert, None, "untrusted", 4)
        .await
        .is_err());

    backend.wait_for_spans(2, WAIT).await.unwrap();
    let mut names: Vec<String> = backend
        .spans()
        .iter()
        .map(|s| s.span.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["grpc over tls", "http over tls"]);
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let server = self_signed("localhost");
    let client = self_signed("client.test");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("clients.pem"),
    );
    std::fs::write(&cert, &server.cert).unwrap();
    std::fs::write(&key, &server.key).unwrap();
    std::fs::write(&ca, &client.cert).unwrap();
    let backend = RecordingBackend::start_http().await;
    let ports = (free_port(), free_port(), free_port());
    let mtls = tls_block(
        &cert,
        &key,
        &format!("          client_ca_file: {}\n", ca.display()),
    );
    let config = tls_gateway_config(&backend, ports, &mtls, "");
    let gateway = Gateway::start(&config).await;

    let refused = tls_grpc_send(ports.0, &server.cert, None, "no client cert", 1).await;
    assert!(
        refused.is_err(),
        "a client without a certificate got through"
    );
    let stranger = self_signed("stranger.test");
    let refused = tls_grpc_send(ports.0, &server.cert, Some(&stranger), "wrong cert", 2).await;
    assert!(
        refused.is_err(),
        "a client with an unknown certificate got through"
    );
    tls_grpc_send(ports.0, &server.cert, Some(&client), "with client cert", 3)
        .await
        .unwrap();
    backend.wait_for_spans(1, WAIT).await.unwrap();
    let names: Vec<String> = backend
        .spans()
        .iter()
        .map(|s| s.span.name.clone())
        .collect();
    assert_eq!(names, ["with client cert"]);
    let failures = gateway
        .metric(
            "tailgate_receiver_tls_handshake_failures",
            &[("transport", "grpc")],
        )
        .await;
    assert!(failures >= 2.0, "handshake failures counted: {failures}");
}

/// Across processes: the gateway re-reads its certificate files every `reload_interval`; a
/// client that trusts only the new certificate gets through once it is rotated in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_after_reload_interval_without_a_restart() {
    let (old, new) = (self_signed("localhost"), self_signed("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &old.cert).unwrap();
    std::fs::write(&key, &old.key).unwrap();
    let backend = RecordingBackend::start_http().await;
    let ports = (free_port(), free_port(), free_port());
    let block = tls_block(&cert, &key, "          reload_interval: 100ms\n");
    let config = tls_gateway_config(&backend, ports, &block, "");
    let _gateway = Gateway::start(&config).await;

    tls_grpc_send(ports.0, &old.cert, None, "old cert", 1)
        .await
        .unwrap();
    assert!(tls_grpc_send(ports.0, &new.cert, None, "too early", 2)
        .await
        .is_err());
    // Key first, then the certificate: a reload between the two writes fails and keeps the old
    // pair (the mismatch is refused), so no half-rotated pair is ever served.
    std::fs::write(&key, &new.key).unwrap();
    std::fs::write(&cert, &new.cert).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tls_grpc_send(ports.0, &new.cert, None, "new cert", 3).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the rotated certificate was never served: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    backend.wait_for_spans(2, WAIT).await.unwrap();
}

/// Issue 14: the `otlphttp` exporter checks the backend's certificate against
/// `tls.server_name_override`, not the URL's host (the gRPC exporter already did). The backend
/// here is a second gateway with a TLS receiver whose certificate names `backend.internal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlphttp_exporter_honours_server_name_override() {
    let cert = self_signed("backend.internal");
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, &cert.cert).unwrap();
    std::fs::write(&key_file, &cert.key).unwrap();
    let recorder = RecordingBackend::start_http().await;
    let tls_ports = (free_port(), free_port(), free_port());
    let tls_backend = tls_gateway_config(
        &recorder,
        tls_ports,
        "",
        &tls_block(&cert_file, &key_file, ""),
    );
    let _tls_backend = Gateway::start(&tls_backend).await;

    let (grpc, health) = (free_port(), free_port());
    let config = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
exporters:
  otlphttp:
    endpoint: https://127.0.0.1:{port}
    compression: none
    tls:
      ca_file: {ca}
      server_name_override: backend.internal
    retry_on_failure: {{enabled: false}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  extensions: [health_check]
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlphttp]}}
"#,
        metrics = free_port(),
        port = tls_ports.1,
        ca = cert_file.display()
    );
    let gateway = Gateway::start(&config).await;
    grpc_send(grpc, None, "via override", 1).await.unwrap();
    if let Err(e) = recorder.wait_for_spans(1, WAIT).await {
        panic!("not delivered ({e:?}):\n{}", gateway.logs());
    }
    assert_eq!(recorder.spans()[0].span.name, "via override");
}

/// The gRPC exporter sends its authenticator's credentials as request metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_exporter_sends_its_authenticators_token() {
    let backend = RecordingBackend::start_grpc().await;
    let (grpc, health, metrics) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
exporters:
  otlp/tempo:
    endpoint: {backend}
    tls: {{insecure: true}}
    auth: {{authenticator: bearertokenauth/tempo}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
  bearertokenauth/tempo:
    scheme: Token
    token: "grpc-SECRET"
service:
  extensions: [health_check, bearertokenauth/tempo]
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlp/tempo]}}
"#,
        backend = backend.addr()
    );
    let gateway = Gateway::start(&config).await;
    grpc_send(grpc, None, "to tempo", 1).await.unwrap();
    backend.wait_for_spans(1, WAIT).await.unwrap();
    assert_eq!(
        backend.requests()[0].header("authorization"),
        Some("Token grpc-SECRET")
    );
    assert!(!gateway.logs().contains("SECRET"));
}
