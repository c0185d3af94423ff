use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::helpers::{eventually, stack, Client};

fn http_status(e: WsError) -> u16 {
    match e {
        WsError::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_handshake_refuses_before_upgrading(db: PgPool) {
    let s = stack(db, 1, |c| c.max_connections_per_user = 2).await;
    let alice = s.user("alice").await;
    let port = s.gateways[0].port;
    assert_eq!(
        http_status(Client::connect(port, "", None, None).await.err().unwrap()),
        401
    );
    assert_eq!(
        http_status(
            Client::connect(port, "not-a-token", None, None)
                .await
                .err()
                .unwrap()
        ),
        401
    );
    let forged = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIwIn0.";
    assert_eq!(
        http_status(
            Client::connect(port, forged, None, None)
                .await
                .err()
                .unwrap()
        ),
        401
    );
    let r = Client::connect(port, &alice.token, Some("https://evil.example"), None).await;
    assert_eq!(http_status(r.err().unwrap()), 403);
    // A listed origin, and no origin at all (non-browser clients), are allowed.
    let _a = Client::connect(port, &alice.token, Some("http://localhost:5173"), None)
        .await
        .unwrap();
    let _b = Client::connect(port, &alice.token, None, None)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || s.gateways[0]
            .gateway
            .hub
            .connection_count()
            == 2)
        .await
    );
    // The per-user cap.
    let r = Client::connect(port, &alice.token, None, None).await;
    assert_eq!(http_status(r.err().unwrap()), 429);
    // Bearer header instead of ?token=.
    let bob = s.user("bob").await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://127.0.0.1:{port}/ws"
        ))
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", bob.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let first = futures_util::StreamExt::next(&mut ws)
        .await
        .unwrap()
        .unwrap();
    assert!(first.to_text().unwrap().contains("\"ready\""));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bad_frames_get_errors_and_the_connection_stays(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut c = s.connect(0, &alice).await;
    // Each error names the type of the frame it answers, when that type could be read.
    let cases = [
        ("{not json", "invalid_json", None),
        (r#"{"type":"dance","data":{}}"#, "unknown_type", None),
        (r#"{"data":{}}"#, "invalid_payload", None),
        (
            r#"{"type":"send_message","data":{"chat_type":"room","chat_id":"x","content":"hi","client_id":"k1"}}"#,
            "invalid_payload",
            Some("send_message"),
        ),
        (
            r#"{"type":"mark_read","data":{"chat_type":"room"}}"#,
            "invalid_payload",
            Some("mark_read"),
        ),
        (
            r#"{"type":"sync","data":{"positions":"all"}}"#,
            "invalid_payload",
            Some("sync"),
        ),
        (
            r#"{"type":"typing","data":{"chat_type":"room","chat_id":"00000000-0000-0000-0000-000000000000"}}"#,
            "forbidden",
            Some("typing"),
        ),
        (
            r#"{"type":"reauth","data":{"token":"not-a-token"}}"#,
            "invalid_token",
            Some("reauth"),
        ),
        (
            r#"{"type":"sync","data":{"positions":[{"chat_type":"room","chat_id":"00000000-0000-0000-0000-000000000000","seq":"x\u0000"}]}}"#,
            "invalid_payload",
            Some("sync"),
        ),
    ];
    for (raw, code, in_reply_to) in cases {
        c.send_raw(Message::Text(raw.into())).await;
        let e = c.expect("error").await;
        assert_eq!(e["data"]["code"], code, "{raw}");
        assert_eq!(e["data"]["in_reply_to"].as_str(), in_reply_to, "{raw}");
        assert!(e["data"]["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    c.send_raw(Message::Text(r#"{"type":"send_message","data":{"chat_type":"room","chat_id":"x","content":"hi","client_id":"k1"}}"#.into())).await;
    assert_eq!(
        c.expect("error").await["data"]["client_id"],
        "k1",
        "a refused send names its client_id"
    );

    // Refused by chat-service: not a member, no such user, empty content.
    let bob = s.user("bob").await;
    let bobs_room = s.room(&bob, "bobs", &[]).await;
    c.send(
        "send_message",
        json!({"content": "hi", "chat_type": "room", "chat_id": bobs_room, "client_id": "f1"}),
    )
    .await;
    let e = c.expect("error").await;
    assert_eq!(
        (
            e["data"]["client_id"].as_str(),
            e["data"]["code"].as_str(),
            e["data"]["in_reply_to"].as_str()
        ),
        (Some("f1"), Some("forbidden"), Some("send_message"))
    );
    c.send("send_message", json!({"content": "hi", "chat_type": "private", "chat_id": uuid::Uuid::new_v4(), "client_id": "f2"})).await;
    assert_eq!(c.expect("error").await["data"]["code"], "not_found");
    c.send(
        "send_message",
        json!({"content": "", "chat_type": "room", "chat_id": room, "client_id": "f3"}),
    )
    .await;
    assert_eq!(c.expect("error").await["data"]["code"], "invalid_payload");

    c.send("ping", json!({})).await;
    c.expect("pong").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn frames_over_64_kib_close_with_1009(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let mut c = s.connect(0, &alice).await;
    let big = json!({"type": "ping", "data": {"pad": "x".repeat(70 * 1024)}}).to_string();
    c.send_raw(Message::Text(big.into())).await;
    assert_eq!(c.close_code().await, Some(1009));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn sending_is_rate_limited_per_connection(db: PgPool) {
    let s = stack(db, 1, |c| {
        c.send_rate = shared::limits::Rate {
            per_second: 1,
            burst: 3,
        };
    })
    .await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut c = s.connect(0, &alice).await;
    for i in 0..6 {
        c.send("send_message", json!({"content": format!("m{i}"), "chat_type": "room", "chat_id": room, "client_id": format!("r{i}")})).await;
    }
    let frames = c.drain(Duration::from_millis(800)).await;
    let limited: Vec<_> = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["data"]["code"] == "rate_limited")
        .collect();
    let acks = frames.iter().filter(|f| f["type"] == "ack").count();
    assert_eq!(acks, 3, "the burst goes through: {frames:?}");
    assert_eq!(limited.len(), 3);
    assert!(limited[0]["data"]["client_id"].as_str().is_some());
    c.send("ping", json!({})).await;
    c.expect("pong").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn silent_connections_are_reaped_after_three_heartbeats(db: PgPool) {
    let s = stack(db, 1, |c| c.heartbeat_interval = Duration::from_millis(150)).await;
    let alice = s.user("alice").await;
    let port = s.gateways[0].port;
    // A raw client that completes the upgrade and then never reads or answers pings.
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?token={}", alice.token))
            .await
            .unwrap();
    let hub = &s.gateways[0].gateway.hub;
    assert!(eventually(Duration::from_secs(1), || hub.connection_count() == 1).await);
    assert!(
        eventually(Duration::from_secs(3), || hub.connection_count() == 0).await,
        "reaped"
    );
    drop(ws);
    // A client that answers pings (tungstenite does, while it reads) stays.
    let mut c = s.connect(0, &alice).await;
    let _ = c.drain(Duration::from_millis(900)).await;
    assert_eq!(hub.connection_count(), 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn non_websocket_requests_and_health(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let base = format!("http://127.0.0.1:{}", s.gateways[0].port);
    let r = s.http.get(format!("{base}/ws")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "not_websocket"
    );
    for path in ["/health", "/health/redis"] {
        assert_eq!(
            s.http
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        s.http
            .get(format!("{base}/health/db"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let metrics = s
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_full_node_refuses_with_503(db: PgPool) {
    let s = stack(db, 1, |c| c.max_connections = 1).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let _a = s.connect(0, &alice).await;
    let r = Client::connect(s.gateways[0].port, &bob.token, None, None).await;
    assert_eq!(http_status(r.err().unwrap()), 503);
}

/// A client may send its first frame in the same packet as the upgrade request: the bytes
/// read past the request reach the WebSocket, not lost with the HTTP connection.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_frame_sent_with_the_upgrade_request_is_read(db: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::{
        tungstenite::protocol::{
            frame::{coding::OpCode, Frame},
            Role,
        },
        MaybeTlsStream, WebSocketStream,
    };

    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let port = s.gateways[0].port;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut packet = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        alice.token
    )
    .into_bytes();
    let mut ping = Frame::message(
        json!({"type": "ping", "data": {}}).to_string().into_bytes(),
        OpCode::Data(tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text),
        true,
    );
    ping.header_mut().mask = Some([7, 1, 9, 3]);
    ping.format(&mut packet).unwrap();
    tcp.write_all(&packet).await.unwrap();
    // The response head, byte by byte: nothing of the frames after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let ws = WebSocketStream::from_raw_socket(MaybeTlsStream::Plain(tcp), Role::Client, None).await;
    let mut client = Client { ws, msgpack: false };
    client.expect("ready").await;
    let pong = tokio::time::timeout(Duration::from_secs(5), client.expect("pong")).await;
    assert!(pong.is_ok(), "the ping sent with the request was answered");
}

/// A number setting past what the gateway can use (a timer beyond an hour, a semaphore of
/// 2^64 permits) stops it at start with one line naming the setting, not a panic later.
#[test]
fn out_of_range_settings_stop_the_process_with_one_line() {
    for (name, value, expected) in [
        (
            "HEARTBEAT_INTERVAL_MS",
            "18446744073709551615",
            "must be at most 3600000",
        ),
        (
            "UPGRADES_IN_FLIGHT",
            "18446744073709551615",
            "must be at most 100000",
        ),
        (
            "SHUTDOWN_GRACE_SECONDS",
            "18446744073709551615",
            "must be at most 3600",
        ),
        (
            "PRESENCE_TTL_SECONDS",
            "18446744073709551615",
            "must be at most 86400",
        ),
        (
            "WS_READ_BUFFER_BYTES",
            "4294967296",
            "must be at most 16777216",
        ),
        ("REDIS_CLUSTER_CHECK_MS", "50", "must be at least 100"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env_clear()
            .env("SECRET_KEY", "0123456789abcdef0123456789abcdef")
            .env(name, value)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} started");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            stderr.trim(),
            format!("configuration error: {name} is invalid: {expected}")
        );
    }
}
