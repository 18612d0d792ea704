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
