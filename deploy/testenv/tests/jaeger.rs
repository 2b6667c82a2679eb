//! A real Jaeger: a span sent over OTLP gRPC can be found through the query API.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span, Tracer, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use p2p_mpc_testenv::{Jaeger, or_skip, port_open, process_alive, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_receives_otlp_grpc_spans_and_answers_queries() {
    let Some(jaeger) = or_skip(Jaeger::start().await) else {
        return;
    };
    let service = format!("testenv-jaeger-{}", std::process::id());

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(jaeger.otlp_grpc_endpoint())
        .build()
        .unwrap_or_else(|e| panic!("building the OTLP exporter: {e}"));
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(service.clone())
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("p2p-mpc-testenv");
    let mut span = tracer.start("testenv-session");
    span.set_attribute(KeyValue::new("session.id", "s-42"));
    span.end();
    // Shutting down flushes the batch; it blocks, so not on a runtime worker.
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("shutdown task")
        .unwrap_or_else(|e| panic!("flushing spans to Jaeger: {e}"));

    let span = wait_for(
        "span testenv-session in Jaeger",
        Duration::from_secs(30),
        || async {
            let traces = jaeger.traces(&service).await.map_err(|e| e.to_string())?;
            traces
                .iter()
                .flat_map(|t| t["spans"].as_array().cloned().unwrap_or_default())
                .find(|s| s["operationName"] == "testenv-session")
                .ok_or_else(|| format!("{} traces of {service}", traces.len()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let tags = span["tags"].as_array().cloned().unwrap_or_default();
    assert!(
        tags.iter()
            .any(|t| t["key"] == "session.id" && t["value"] == "s-42"),
        "span lacks session.id=s-42: {span}"
    );
    let services = jaeger.services().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        services.contains(&service),
        "services {services:?} lack {service}"
    );

    let pid = jaeger.pid();
    let ports: Vec<u16> = [jaeger.otlp_grpc_endpoint(), jaeger.query_url()]
        .iter()
        .filter_map(|url| url.rsplit(':').next()?.parse().ok())
        .collect();
    drop(jaeger);
    assert!(
        !process_alive(pid),
        "jaeger (pid {pid}) still running after drop"
    );
    for port in ports {
        assert!(!port_open(port), "port {port} still open after drop");
    }
}
