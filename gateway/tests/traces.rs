//! Tracing end to end: a deployment (chat-service and two gateways) exporting over OTLP/HTTP to
//! a collector endpoint served by this test. One `send_message` must be one connected trace
//! — the sender's frame on one gateway, its append to the send stream, chat-service's batch
//! with its Postgres statements and its Redis publish, and the delivery on both gateways — and
//! a REST request continues the trace of its `traceparent` header, its log lines carrying the
//! trace's id.
//!
//! Its own test binary: tracing is installed once per process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ws/helpers.rs"]
mod helpers;

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, routing::post, Router};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value, trace::v1::Span,
};
use prost::Message as _;
use serde_json::{json, Value};
use shared::telemetry::{Setup, Traces};
use sqlx::PgPool;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Every span the collector has received, with the `service.name` of its resource.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Collector {
    /// Serves `POST /v1/traces` on a free loopback port; returns the endpoint's URL.
    async fn start(&self) -> String {
        let spans = self.spans.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let spans = spans.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    let mut spans = spans.lock().unwrap();
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value.as_ref()?.value.as_ref())
                            .map(|v| match v {
                                any_value::Value::StringValue(s) => s.clone(),
                                other => format!("{other:?}"),
                            })
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                spans.push((service.clone(), span));
                            }
                        }
                    }
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://127.0.0.1:{port}/v1/traces")
    }

    fn spans(&self) -> Vec<Span> {
        let spans = self.spans.lock().unwrap();
        spans.iter().map(|(_, s)| s.clone()).collect()
    }

    fn services(&self) -> Vec<String> {
        let spans = self.spans.lock().unwrap();
        spans.iter().map(|(service, _)| service.clone()).collect()
    }
}

/// Log lines, as the services write them.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn json(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// The spans of the trace begun by the one `ws send_message` span, once every expected span
/// has arrived (exported spans come in batches, the last ones at a flush).
async fn send_trace(collector: &Collector, telemetry: &shared::telemetry::Telemetry) -> Vec<Span> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        telemetry.flush().await;
        let spans = collector.spans();
        let trace = named(&spans, "ws send_message")
            .first()
            .map(|frame| frame.trace_id.clone());
        if let Some(trace) = trace {
            let ours: Vec<Span> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
            let complete = named(&ours, "deliver message").len() >= 2
                && named(&ours, "deliver ack").len() == 1
                && named(&ours, "send.batch").len() == 1
                && named(&ours, "send.append").len() == 1
                && named(&ours, "redis.publish").len() == 1;
            if complete {
                // Anything late would still show up.
                tokio::time::sleep(Duration::from_millis(300)).await;
                telemetry.flush().await;
                return collector
                    .spans()
                    .into_iter()
                    .filter(|s| s.trace_id == trace)
                    .collect();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the send's trace is incomplete: {:#?}",
            collector
                .spans()
                .iter()
                .map(|s| (
                    &s.name,
                    hex(&s.trace_id),
                    hex(&s.span_id),
                    hex(&s.parent_span_id)
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn one_send_is_one_connected_trace(db: PgPool) {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let lines = Lines::default();
    let writer = lines.clone();
    let telemetry = shared::telemetry::install(Setup {
        readable: false,
        // tower_http's request lines are debug lines written inside each request's span; and
        // nothing at info is logged, yet every span must still be exported.
        filter: "warn,tower_http=debug".into(),
        writer: Some(BoxMakeWriter::new(move || writer.clone())),
        service: "chatsphere-traces-test",
        traces: Some(Traces {
            endpoint: Some(endpoint),
        }),
    })
    .unwrap();
    assert!(shared::telemetry::enabled());

    let s = helpers::stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "traced", &[&bob]).await;
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    a.send(
        "send_message",
        json!({"chat_type": "room", "chat_id": room, "content": "follow me", "client_id": "t1"}),
    )
    .await;
    a.expect_each(&["ack", "message"]).await;
    assert_eq!(b.expect("message").await["data"]["content"], "follow me");

    let trace = send_trace(&collector, &telemetry).await;
    let by_id: HashMap<Vec<u8>, &Span> = trace.iter().map(|s| (s.span_id.clone(), s)).collect();
    let one = |name: &str| {
        let found = named(&trace, name);
        assert_eq!(found.len(), 1, "one {name} span: {found:#?}");
        found[0]
    };
    let frame = one("ws send_message");
    assert!(
        frame.parent_span_id.is_empty(),
        "the frame begins the trace"
    );
    assert_eq!(
        one("send.append").parent_span_id,
        frame.span_id,
        "the gateway's XADD continues the frame"
    );
    let batch = one("send.batch");
    assert_eq!(
        batch.parent_span_id, frame.span_id,
        "chat-service continues the frame"
    );
    for statement in ["resolve targets", "insert messages"] {
        assert_eq!(one(statement).parent_span_id, batch.span_id, "{statement}");
    }
    assert_eq!(one("redis.publish").parent_span_id, batch.span_id);
    let deliveries = named(&trace, "deliver message");
    assert_eq!(
        deliveries.len(),
        2,
        "one delivery per gateway: {deliveries:#?}"
    );
    for d in deliveries.iter().chain([&one("deliver ack")]) {
        assert_eq!(d.parent_span_id, batch.span_id, "delivered from the batch");
    }
    // Connected: every span of the trace reaches the frame through its parents.
    for span in &trace {
        let mut at: &Span = span;
        let mut hops = 0;
        while !at.parent_span_id.is_empty() {
            at = by_id
                .get(&at.parent_span_id)
                .copied()
                .unwrap_or_else(|| panic!("{}'s parent is not in the trace", span.name));
            hops += 1;
            assert!(hops < 10);
        }
        assert_eq!(
            at.span_id, frame.span_id,
            "{} hangs off the frame",
            span.name
        );
    }
    assert!(collector
        .services()
        .iter()
        .all(|s| s == "chatsphere-traces-test"));

    // REST: the caller's trace goes on, and the request's log lines carry its id.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = s
        .http
        .get(format!("{}/chat/rooms", s.chat[0]))
        .bearer_auth(&alice.token)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let request = loop {
        telemetry.flush().await;
        let spans = collector.spans();
        if let Some(span) = spans.iter().find(|s| hex(&s.trace_id) == caller_trace) {
            break span.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span of the caller's trace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(request.name, "GET /chat/rooms");
    assert_eq!(hex(&request.parent_span_id), caller_span);
    let logged: Vec<Value> = lines
        .json()
        .into_iter()
        .filter(|l| l["span"]["trace_id"] == caller_trace)
        .collect();
    assert!(
        logged
            .iter()
            .any(|l| l["span"]["path"] == "/chat/rooms" && l["level"] == "DEBUG"),
        "the request's log lines carry the trace id: {logged:#?}"
    );
    telemetry.shutdown().await;
}
