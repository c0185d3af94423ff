//! Logs and traces.
//!
//! **Logs**: human-readable lines when `DEBUG=true`, JSON lines otherwise; `RUST_LOG` overrides
//! the default filter (of the logs only: spans are exported at info level whatever it says). A
//! line written inside a traced span carries the trace's id (`trace_id`, in the span fields of
//! the line).
//!
//! **Traces**: OpenTelemetry, exported over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and off otherwise (or with
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`). The SDK reads the other standard
//! variables itself: `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `OTEL_TRACES_SAMPLER` (and
//! `…_ARG`), `OTEL_BSP_*`, `OTEL_SERVICE_NAME` (default: the service's own name) and
//! `OTEL_RESOURCE_ATTRIBUTES`. While tracing is off, the spans that exist only for traces are
//! never created ([`enabled`]).
//!
//! A trace crosses queues and processes as a W3C `traceparent` string: in the `traceparent`
//! HTTP header, in a [`crate::chat::SendCommand`] on the send stream and in the events
//! chat-service publishes, so one send is one trace from the sender's gateway through
//! chat-service, Postgres and Redis to every gateway that delivers it.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context as _};
use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{SpanContext, TraceContextExt, TracerProvider as _},
    Context,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    filter::FilterExt, fmt::writer::BoxMakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
    EnvFilter, Layer,
};

/// The filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,sqlx=warn,fred=warn,tower_http=warn";

/// Whether spans are exported (see [`enabled`]).
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported by this process. Spans that serve only traces (one per
/// WebSocket frame, per delivery) are created only then.
pub fn enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Where and how to export traces.
#[derive(Debug, Clone, Default)]
pub struct Traces {
    /// The full URL of the traces endpoint; `None`: from the `OTEL_*` variables.
    pub endpoint: Option<String>,
}

impl Traces {
    /// Tracing as the standard variables ask: `None` when off.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            return None;
        }
        Some(Self { endpoint: None })
    }
}

/// How to set up logging and tracing; [`Setup::from_env`] is what the services use.
pub struct Setup {
    /// Human-readable lines (`DEBUG=true`) or JSON lines.
    pub readable: bool,
    /// The log filter (`RUST_LOG`'s syntax).
    pub filter: String,
    /// Where log lines go; standard output when `None`.
    pub writer: Option<BoxMakeWriter>,
    /// The service's name in traces, unless `OTEL_SERVICE_NAME` names another.
    pub service: &'static str,
    pub traces: Option<Traces>,
}

impl Setup {
    pub fn from_env(debug: bool, service: &'static str) -> Self {
        Self {
            readable: debug,
            filter: std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_owned()),
            writer: None,
            service,
            traces: Traces::from_env(),
        }
    }
}

/// The exporter of this process's traces; flush it before exiting ([`Telemetry::shutdown`]).
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every finished span now. (Async: the export itself runs on this runtime, which
    /// must not be blocked while it waits.)
    pub async fn flush(&self) {
        if let Some(p) = self.provider.clone() {
            match tokio::task::spawn_blocking(move || p.force_flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not export traces"),
                Err(e) => tracing::warn!(error = %e, "could not export traces"),
            }
        }
    }

    /// Exports what is left and stops exporting.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            TRACING.store(false, Ordering::Relaxed);
            match tokio::task::spawn_blocking(move || p.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not export the last traces"),
                Err(e) => tracing::warn!(error = %e, "could not export the last traces"),
            }
        }
    }
}

/// Installs logging (and, when `traced`, tracing if the `OTEL_*` variables ask for it) as the
/// process's subscriber. A second call (several services in one test process) changes nothing.
pub fn init(debug: bool, service: &'static str, traced: bool) -> anyhow::Result<Telemetry> {
    let mut setup = Setup::from_env(debug, service);
    if !traced {
        setup.traces = None;
    }
    install(setup)
}

/// [`init`] with explicit settings.
pub fn install(setup: Setup) -> anyhow::Result<Telemetry> {
    let logs_filter = EnvFilter::try_new(&setup.filter)
        .with_context(|| format!("the log filter {:?}", setup.filter))?;
    let writer = setup
        .writer
        .unwrap_or_else(|| BoxMakeWriter::new(std::io::stdout));
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = if setup.readable {
        fmt.with_target(false).boxed()
    } else {
        fmt.json().flatten_event(true).boxed()
    };
    // Info spans stay known to the log lines whatever the filter, so that a line passed by it
    // still carries the request's or the send's fields (its trace id among them).
    let spans_too = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span() && *meta.level() <= tracing::Level::INFO
    });
    let logs = fmt.with_filter(logs_filter.or(spans_too));
    let Some(traces) = setup.traces else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Telemetry::default());
    };
    let provider = provider(&traces, setup.service)?;
    let tracer = provider.tracer(setup.service);
    // Spans follow their own filter, not `RUST_LOG`: quieter logs must not empty the traces.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_filter(EnvFilter::new(DEFAULT_FILTER));
    if tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_err()
    {
        // Another subscriber was installed first: its choice stands.
        let _ = provider.shutdown();
        return Ok(Telemetry::default());
    }
    TRACING.store(true, Ordering::Relaxed);
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn provider(traces: &Traces, service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    if let Ok(protocol) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
    {
        if protocol.trim() != "http/protobuf" {
            bail!("OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: only http/protobuf");
        }
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(RuntimeClient::new()?);
    if let Some(endpoint) = &traces.endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter
        .build()
        .context("the OpenTelemetry exporter (the OTEL_EXPORTER_OTLP_* variables)")?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The exporter's HTTP client: the services' own reqwest, its requests run on the runtime that
/// installed tracing (the SDK exports from a thread of its own, which has no runtime).
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl RuntimeClient {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("tracing must be set up inside the Tokio runtime")?;
        Ok(Self {
            client: reqwest::Client::new(),
            runtime,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = sent.await??;
        Ok(opentelemetry_http::Response::builder()
            .status(status)
            .body(body)?)
    }
}

/// The W3C `traceparent` of `span`, to carry its trace over a queue or to another process;
/// `None` while tracing is off.
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(1);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// The span context a `traceparent` names, if it is well formed.
pub fn remote(traceparent: &str) -> Option<SpanContext> {
    // The propagator takes ids shorter than the W3C format's fixed widths; they are malformed.
    let widths: Vec<usize> = traceparent.split('-').map(str::len).collect();
    if widths.get(..4) != Some(&[2, 32, 16, 2][..]) {
        return None;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let remote = context.span().span_context().clone();
    remote.is_valid().then_some(remote)
}

/// Makes `span` a part of the trace `traceparent` names (a new trace when `None` or malformed),
/// and records the trace's id on it for the log lines written inside it. Call it before the
/// span is first entered. `span` must have an empty `trace_id` field.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if !enabled() {
        return;
    }
    if let Some(parent) = traceparent.and_then(remote) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    record_trace_id(span);
}

/// Links `span` to the trace `traceparent` names (when it is well formed): for a span that
/// does work for several traces at once.
pub fn link(span: &Span, traceparent: &str) {
    if let Some(other) = remote(traceparent) {
        span.add_link(other);
    }
}

/// A span that exists only for traces: `make` builds it only while tracing is on (a disabled
/// span otherwise, which costs nothing), and it goes on in the trace `parent` names, or in the
/// current span's when `None`. A root span should have an empty `trace_id` field for the logs.
pub fn traced(parent: Option<&str>, make: impl FnOnce() -> Span) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = make();
    continue_trace(&span, parent);
    span
}

/// [`continue_trace`] from the `traceparent` header of an HTTP request.
pub fn continue_from_headers(span: &Span, headers: &axum::http::HeaderMap) {
    if !enabled() {
        return;
    }
    let parent = TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(headers))
        .span()
        .span_context()
        .clone();
    if parent.is_valid() {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    record_trace_id(span);
}

/// Adds the `traceparent` header of `span`'s trace to an outgoing request.
pub fn inject_header(span: &Span, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match traceparent(span) {
        Some(value) => request.header("traceparent", value),
        None => request,
    }
}

/// Records the trace id of `span` in its `trace_id` field.
pub fn record_trace_id(span: &Span) {
    let id = span.context().span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_parses_only_when_well_formed() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = remote(good).unwrap();
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(parsed.is_remote());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert!(remote(bad).is_none(), "{bad:?}");
        }
    }
}
