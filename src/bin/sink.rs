//! `tailgate-sink`: a recording OTLP/gRPC backend for the benchmark scripts (`bench/scale.sh`).
//!
//! It accepts `TraceService/Export` on `--listen`, walks each request with the gateway's own OTLP
//! layer and appends one record per span to `--out`: the trace ID (16 bytes), the span ID
//! (8 bytes) and the index of the sender (1 byte), where the sender is the request's
//! `x-sampler` header, listed in `<out>.senders` in index order. A request that does not parse is
//! refused with INVALID_ARGUMENT and counted. Records are flushed at least every 100 ms and at
//! exit (SIGTERM or SIGINT), so a checker can read the file once the sink has stopped.
//!
//! Like a strict backend, it refuses requests over `--max-message-mib` (default 4, the
//! Collector's and Tempo's default).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tailgate::otlp::{parse_export_request, FieldReader, RawBytesCodec, Value, EXPORT_PATH};
use tonic::server::UnaryService;

const USAGE: &str =
    "usage: tailgate-sink --listen <host:port> --out <file> [--max-message-mib <n>]";

/// The records and senders written so far.
struct Recorder {
    out: std::io::BufWriter<std::fs::File>,
    senders: HashMap<String, u8>,
    senders_path: PathBuf,
    refused: u64,
}

impl Recorder {
    fn sender(&mut self, name: &str) -> u8 {
        if let Some(&index) = self.senders.get(name) {
            return index;
        }
        let index = self.senders.len() as u8;
        self.senders.insert(name.to_string(), index);
        let mut names: Vec<(&String, &u8)> = self.senders.iter().collect();
        names.sort_by_key(|(_, i)| **i);
        let text: String = names.iter().map(|(n, _)| format!("{n}\n")).collect();
        let _ = std::fs::write(&self.senders_path, text);
        index
    }

    /// Records every span of a request; `Err` if it does not parse.
    fn record(&mut self, body: &[u8], sender: &str) -> Result<usize, String> {
        let parsed = parse_export_request(body).map_err(|e| e.to_string())?;
        let sender = self.sender(sender);
        for span in &parsed.spans {
            let (start, end) = span.range;
            let mut span_id = [0u8; 8];
            let mut fields = FieldReader::at(&body[start..end], start);
            while let Ok(Some((field, value, _))) = fields.next() {
                if let (2, Value::Len(id)) = (field, value) {
                    span_id.copy_from_slice(id);
                }
            }
            self.out
                .write_all(&span.info.trace_id)
                .and_then(|_| self.out.write_all(&span_id))
                .and_then(|_| self.out.write_all(&[sender]))
                .map_err(|e| e.to_string())?;
        }
        Ok(parsed.spans.len())
    }
}

#[derive(Clone)]
struct Export(Arc<Mutex<Recorder>>);

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<tonic::Response<Bytes>, tonic::Status>> + Send>,
    >;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let recorder = Arc::clone(&self.0);
        Box::pin(async move {
            let sender = request
                .metadata()
                .get("x-sampler")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let body = request.into_inner();
            let mut recorder = recorder.lock().unwrap_or_else(|p| p.into_inner());
            match recorder.record(&body, &sender) {
                Ok(_) => Ok(tonic::Response::new(Bytes::new())),
                Err(error) => {
                    recorder.refused += 1;
                    Err(tonic::Status::invalid_argument(error))
                }
            }
        })
    }
}

#[derive(Clone)]
struct Service {
    export: Export,
    max_message: usize,
}

impl tonic::server::NamedService for Service {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Service {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawBytesCodec)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(this.max_message);
            Ok(grpc.unary(this.export, request).await)
        })
    }
}

fn parse_args() -> Result<(String, PathBuf, usize), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut listen, mut out, mut mib) = (None, None, 4usize);
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().ok_or(USAGE)?;
        match args[i].as_str() {
            "--listen" => listen = Some(value),
            "--out" => out = Some(PathBuf::from(value)),
            "--max-message-mib" => mib = value.parse().map_err(|_| USAGE)?,
            _ => return Err(USAGE.into()),
        }
        i += 2;
    }
    Ok((listen.ok_or(USAGE)?, out.ok_or(USAGE)?, mib))
}

fn main() -> ExitCode {
    let (listen, out, mib) = match parse_args() {
        Ok(a) => a,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async move {
        let file = std::fs::File::create(&out).expect("create the records file");
        let recorder = Arc::new(Mutex::new(Recorder {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            senders: HashMap::new(),
            senders_path: out.with_extension("senders"),
            refused: 0,
        }));
        let service = Service {
            export: Export(Arc::clone(&recorder)),
            max_message: mib << 20,
        };
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .expect("bind --listen");
        let stop = async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        };
        let flusher = Arc::clone(&recorder);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = flusher
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .out
                    .flush();
            }
        });
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop,
            )
            .await
            .expect("serve");
        let mut recorder = recorder.lock().unwrap_or_else(|p| p.into_inner());
        let _ = recorder.out.flush();
        eprintln!("tailgate-sink: {} requests refused", recorder.refused);
    });
    ExitCode::SUCCESS
}
