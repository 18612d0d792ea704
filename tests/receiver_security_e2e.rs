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
  pipelines:
    traces: {{receivers: [otlp], exporters: [debug]}}
"#,
        http = free_port()
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
