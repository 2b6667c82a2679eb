//! Logging and tracing: human logs on stderr, an optional JSON-lines trace file, and an
//! optional OTLP gRPC exporter (Jaeger).

use std::fs::OpenOptions;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value, json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Log levels accepted by `--log-level` and `log_level`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including per-message detail.
    Trace,
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    Info,
    /// Problems the node recovers from.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// The level as a `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// What the tracing set-up needs to know.
#[derive(Debug, Clone)]
pub struct TracingSettings {
    pub log_level: LogLevel,
    /// Write JSON lines to this file.
    pub json_trace_file: Option<PathBuf>,
    /// Export spans over OTLP gRPC to this endpoint (`http://host:port`).
    pub otlp_endpoint: Option<String>,
    /// Service name of exported spans (`p2p-mpc` for a node).
    pub service_name: String,
    /// Resource attributes of exported spans (a node's peer id).
    pub resource_attributes: Vec<(String, String)>,
    /// Log lines on stderr as JSON objects instead of text.
    pub json_logs: bool,
}

/// A problem setting up tracing.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("cannot open JSON trace file {path}: {source}")]
    JsonFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the OTLP exporter to {endpoint}: {message}")]
    Otlp { endpoint: String, message: String },
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadySet(String),
}

/// Keeps the exporters alive; [`TracingGuard::shutdown`] flushes what is pending.
pub struct TracingGuard {
    json: Option<JsonTraceHandle>,
    otel: Option<SdkTracerProvider>,
}

impl TracingGuard {
    /// Flushes the JSON trace file and pending OTLP spans (bounded wait).
    pub async fn shutdown(self) {
        if let Some(provider) = self.otel {
            let flushed = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::task::spawn_blocking(move || provider.shutdown()),
            )
            .await;
            match flushed {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("warning: flushing OTLP spans failed: {e}"),
                Ok(Err(e)) => eprintln!("warning: flushing OTLP spans failed: {e}"),
                Err(_) => {
                    eprintln!("warning: flushing OTLP spans took over 5 s; some spans may be lost")
                }
            }
        }
        if let Some(json) = self.json {
            let _ = tokio::task::spawn_blocking(move || json.flush(Duration::from_secs(2))).await;
        }
    }
}

/// Installs the global subscriber.
pub fn init(settings: &TracingSettings) -> Result<TracingGuard, TracingError> {
    let level = settings.log_level.as_str();
    // The OTLP client's own HTTP/2 stack would otherwise trace its own exports, and Kademlia
    // warns at every periodic bootstrap while a node is alone; request-response warns at every
    // stream over the per-connection cap, which a peer controls.
    let quiet = "h2=warn,hyper=warn,hyper_util=warn,tonic=warn,tower=warn,opentelemetry_sdk=warn,libp2p_kad::behaviour=error,libp2p_request_response::handler=error";
    let filter = match std::env::var("RUST_LOG") {
        Ok(extra) if !extra.trim().is_empty() => EnvFilter::new(format!("{level},{quiet},{extra}")),
        _ => EnvFilter::new(format!("{level},{quiet}")),
    };

    let (text_logs, json_logs) = if settings.json_logs {
        (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
        )
    } else {
        (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            ),
            None,
        )
    };

    let (json_layer, json_handle) = match &settings.json_trace_file {
        Some(path) => {
            let (layer, handle) = JsonTraceLayer::open(path)?;
            (Some(layer), Some(handle))
        }
        None => (None, None),
    };

    let (otel_layer, provider) = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let provider = otlp_provider(endpoint, settings)?;
            let tracer = provider.tracer(settings.service_name.clone());
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(text_logs)
        .with(json_logs)
        .with(json_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| TracingError::AlreadySet(e.to_string()))?;

    Ok(TracingGuard {
        json: json_handle,
        otel: provider,
    })
}

fn otlp_provider(
    endpoint: &str,
    settings: &TracingSettings,
) -> Result<SdkTracerProvider, TracingError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.to_string())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TracingError::Otlp {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes(
            settings
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Messages to the JSON writer thread.
enum JsonLine {
    Line(String),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Handle to the writer thread of the JSON trace file.
struct JsonTraceHandle {
    tx: SyncSender<JsonLine>,
}

impl JsonTraceHandle {
    fn flush(&self, wait: Duration) {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if self.tx.send(JsonLine::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(wait);
        }
    }
}

/// A layer that writes one JSON object per line: each closed span (name, id, parent id,
/// fields, start, duration) and each event (level, target, fields, enclosing spans).
///
/// Lines go through a bounded queue to a writer thread so that logging never blocks the
/// runtime; when the queue is full, lines are dropped and counted in the next line written.
pub struct JsonTraceLayer {
    tx: SyncSender<JsonLine>,
    dropped: AtomicU64,
    next_id: AtomicU64,
}

/// Per-span data kept in the span's extensions.
struct JsonSpanData {
    id: u64,
    fields: Map<String, Value>,
    start: SystemTime,
}

impl JsonTraceLayer {
    fn open(path: &Path) -> Result<(Self, JsonTraceHandle), TracingError> {
        let err = |source| TracingError::JsonFile {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(16 * 1024);
        std::thread::Builder::new()
            .name("json-trace-writer".into())
            .spawn(move || write_lines(rx, BufWriter::new(file)))
            .map_err(err)?;
        Ok((
            Self {
                tx: tx.clone(),
                dropped: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
            },
            JsonTraceHandle { tx },
        ))
    }

    fn emit(&self, mut value: Value) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            value["dropped_before"] = json!(dropped);
        }
        match self.tx.try_send(JsonLine::Line(value.to_string())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn write_lines(rx: Receiver<JsonLine>, mut out: BufWriter<std::fs::File>) {
    loop {
        // Block for the next line, then drain what is queued and flush once.
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut acks = Vec::new();
        let mut handle = |m: JsonLine, out: &mut BufWriter<std::fs::File>| match m {
            JsonLine::Line(l) => {
                let _ = out.write_all(l.as_bytes());
                let _ = out.write_all(b"\n");
            }
            JsonLine::Flush(ack) => acks.push(ack),
        };
        handle(first, &mut out);
        while let Ok(m) = rx.try_recv() {
            handle(m, &mut out);
        }
        let _ = out.flush();
        if !acks.is_empty() {
            let _ = out.get_ref().sync_data();
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
    let _ = out.flush();
}

fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Collects tracing fields into a JSON map.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), json!(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), json!(value));
    }
}

impl<S> tracing_subscriber::Layer<S> for JsonTraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        span.extensions_mut().insert(JsonSpanData {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            fields,
            start: SystemTime::now(),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(data) = span.extensions_mut().get_mut::<JsonSpanData>() {
            values.record(&mut JsonVisitor(&mut data.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let meta = event.metadata();
        let mut spans = Vec::new();
        let mut span_id = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let ext = span.extensions();
                let sid = ext.get::<JsonSpanData>().map(|d| d.id);
                spans.push(json!({"name": span.name(), "id": sid}));
                span_id = sid;
            }
        }
        self.emit(json!({
            "type": "event",
            "timestamp_us": unix_micros(SystemTime::now()),
            "level": meta.level().as_str(),
            "target": meta.target(),
            "fields": fields,
            "span_id": span_id,
            "spans": spans,
        }));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let parent_id = span
            .parent()
            .and_then(|p| p.extensions().get::<JsonSpanData>().map(|d| d.id));
        let ext = span.extensions();
        let Some(data) = ext.get::<JsonSpanData>() else {
            return;
        };
        let end = SystemTime::now();
        let meta = span.metadata();
        self.emit(json!({
            "type": "span",
            "name": span.name(),
            "id": data.id,
            "parent_id": parent_id,
            "target": meta.target(),
            "level": meta.level().as_str(),
            "fields": data.fields,
            "start_us": unix_micros(data.start),
            "duration_us": end.duration_since(data.start).map(|d| d.as_micros() as u64).unwrap_or(0),
        }));
    }
}
