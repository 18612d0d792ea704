//! TLS to the backend: the gateway exports to a gRPC backend that only speaks TLS, with a
//! certificate signed by a CA the gateway trusts through `tls.ca_file`.

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use support::{otlp, Gateway, SamplerConfig, SamplerPorts};
use tokio::sync::mpsc;
use tonic::transport::{Identity, Server, ServerTlsConfig};

struct Recorder(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_traces_reach_a_tls_backend_trusted_through_ca_file() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cert.cert.pem()).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut received) = mpsc::unbounded_channel();
    let identity = Identity::from_pem(cert.cert.pem(), cert.signing_key.serialize_pem());
    let server = tokio::spawn(
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(
                TraceServiceServer::new(Recorder(tx))
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let ports = SamplerPorts::free();
    let config = SamplerConfig {
        ports,
        decision_wait: "200ms".into(),
        policies: "- {name: all, type: always_sample}".into(),
        tail_sampling_extra: String::new(),
        batch: false,
        exporter_id: "otlp/secure".into(),
        exporter_endpoint: format!("localhost:{port}"),
        // No `insecure`: TLS, trusting only the test's CA.
        exporter_extra: format!("tls:\n  ca_file: {}\n", ca_file.display()),
        service_extra: String::new(),
    }
    .render();
    let _gateway = Gateway::start(&config).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    let span = otlp::span(otlp::trace_id(42), otlp::span_id(1), "over tls");
    client
        .export(otlp::request("api", vec![span]))
        .await
        .unwrap();

    let request = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the TLS backend received the kept trace")
        .unwrap();
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.name, "over tls");
    server.abort();
}

/// Issue 14: a front-tier backend whose exporter cannot start (here: its CA file is not there
/// yet, as when a secret is mounted late) stays on the ring and is tried again; once it starts,
/// its traces flow. It used to stay without an exporter for good, refusing every request that
/// touched it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_exporter_could_not_start_is_tried_again_until_it_does() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut received) = mpsc::unbounded_channel();
    let identity = Identity::from_pem(cert.cert.pem(), cert.signing_key.serialize_pem());
    let server = tokio::spawn(
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(TraceServiceServer::new(Recorder(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let (grpc, health, metrics) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    let config = format!(
        "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
exporters:
  loadbalancing:
    protocol:
      otlp:
        compression: none
        tls:
          ca_file: {ca}
    resolver:
      static:
        hostnames: [\"localhost:{port}\"]
extensions:
  health_check:
    endpoint: 127.0.0.1:{health}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      address: 127.0.0.1:{metrics}
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [loadbalancing]
",
        ca = ca_file.display()
    );
    let balancer = Gateway::start(&config).await;
    let mut client = otlp::grpc_client(&format!("http://127.0.0.1:{grpc}")).await;
    let request = || {
        otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(7), otlp::span_id(1), "late ca")],
        )
    };
    let refused = client.export(request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");

    std::fs::write(&ca_file, cert.cert.pem()).unwrap();
    // The balancer tries the backend again every second; until it does, requests are refused
    // with a retryable status, as a client would see them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match client.export(request()).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the backend was never tried again:\n{}",
                    balancer.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the TLS backend received the trace")
        .unwrap();
    assert_eq!(
        got.resource_spans[0].scope_spans[0].spans[0].name,
        "late ca"
    );
    server.abort();
}
