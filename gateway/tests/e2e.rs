//! End-to-end through the public entry (nginx): run by `scripts/e2e`, which starts the real
//! binaries behind nginx and sets CHATSPHERE_URL. Ignored in the ordinary test run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn base() -> String {
    std::env::var("CHATSPHERE_URL").expect("CHATSPHERE_URL (run scripts/e2e)")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("a frame");
        if let Message::Text(t) = frame {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

async fn account(http: &reqwest::Client, name: &str) -> (String, String) {
    let r = http
        .post(format!("{}/auth/register", base()))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "e2e-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "register {name}");
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The OAuth2 form login, through the proxy.
    let r = http
        .post(format!("{}/auth/login", base()))
        .form(&[("username", name), ("password", "e2e-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, token)
}

async fn gateway_connections(port: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("gateway_connections "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
#[ignore = "needs the stack behind nginx: run scripts/e2e"]
async fn through_nginx() {
    let http = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (alice_id, alice) = account(&http, &format!("a{}", &run[..12])).await;
    let (_bob_id, bob) = account(&http, &format!("b{}", &run[..12])).await;

    let me: Value = http
        .get(format!("{}/auth/me", base()))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], alice_id);

    let room: Value = http
        .post(format!("{}/chat/rooms", base()))
        .bearer_auth(&alice)
        .json(&json!({"name": format!("e2e-{run}")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room_id = room["id"].as_str().unwrap().to_owned();
    let r = http
        .post(format!("{}/chat/rooms/{room_id}/join", base()))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Four WebSockets through nginx; least_conn spreads them over both gateways.
    let ws_url = base().replace("http://", "ws://");
    let before: Vec<f64> = futures_util::future::join_all(
        std::env::var("GATEWAY_PORTS")
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| {
                let p = p.to_owned();
                async move { gateway_connections(&p).await }
            }),
    )
    .await;
    let mut sockets = Vec::new();
    for token in [&alice, &bob, &alice, &bob] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_url}/ws?token={token}"))
            .await
            .unwrap();
        next_of(&mut ws, "ready").await;
        sockets.push(ws);
    }
    let ports = std::env::var("GATEWAY_PORTS").unwrap_or_default();
    for (i, port) in ports.split_whitespace().enumerate() {
        let now = gateway_connections(port).await;
        assert!(
            now > before[i],
            "gateway {port} got none of the WebSockets ({} → {now})",
            before[i]
        );
    }

    sockets[0]
        .send(Message::Text(
            json!({"type": "send_message", "data": {"content": "through nginx", "chat_type": "room", "chat_id": room_id, "client_id": "e2e-1"}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    for ws in sockets.iter_mut() {
        let m = next_of(ws, "message").await;
        assert_eq!(m["data"]["content"], "through nginx");
    }

    // One API document covering both services, and the docs pages.
    let spec: Value = http
        .get(format!("{}/openapi.json", base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/auth/login",
        "/auth/me",
        "/chat/rooms",
        "/chat/messages/{chat_type}/{chat_id}",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the combined document"
        );
    }
    for page in ["/docs", "/redoc"] {
        let r = http.get(format!("{}{page}", base())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("/openapi.json"));
    }

    // The proxy's own answers are JSON too.
    let r = http
        .get(format!("{}/nowhere", base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = http
        .post(format!("{}/auth/register", base()))
        .header("content-type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "payload_too_large"
    );
    let r = http
        .get(format!(
            "{}/internal/users/{alice_id}/conversations",
            base()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the internal API is not public");
}

/// What nginx answers itself is JSON, as the services' answers are: requests it refuses before
/// any location (a request line or a header over 8 KiB, a line it cannot parse), a file the
/// app does not have, a method its page does not take. Sent over a bare socket, as a client
/// that builds its own requests would.
#[tokio::test]
#[ignore = "needs the stack behind nginx: run scripts/e2e"]
async fn nginx_refusals_are_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let long = "a".repeat(9000);
    let cases = [
        (
            format!("GET /chat/rooms?x={long} HTTP/1.1\r\nHost: x\r\n\r\n"),
            414,
            "uri_too_long",
        ),
        (
            format!("GET /chat/rooms HTTP/1.1\r\nHost: x\r\nX-Big: {long}\r\n\r\n"),
            400,
            "headers_too_large",
        ),
        ("NONSENSE\r\n\r\n".to_owned(), 400, "bad_request"),
        (
            "GET /assets/none.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            404,
            "not_found",
        ),
        (
            "GET /_errors/not_found.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .to_owned(),
            404,
            "not_found",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_owned(),
            405,
            "method_not_allowed",
        ),
        (
            "GET /assets/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            403,
            "forbidden",
        ),
    ];
    for (request, status, code) in cases {
        let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
            .await
            .expect("nginx closes within 10 s")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let what = &request[..request.len().min(40)];
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {head}"
        );
        assert!(
            head.lines()
                .any(|l| l.eq_ignore_ascii_case("content-type: application/json")),
            "{what}: {head}"
        );
        let body: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
        assert_eq!(body["code"], code, "{what}");
    }
}

/// A frame over 64 KiB is answered with a close frame the client reads (1009), through nginx
/// too: the client is still sending the frame when the gateway refuses it, and a gateway that
/// let go of the socket with the rest unread reset it, which nginx passed on as a reset that
/// could arrive before the close frame (half the time, seen 2026-12-07).
#[tokio::test]
#[ignore = "needs the stack behind nginx: run scripts/e2e"]
async fn oversized_frames_close_with_1009_through_nginx() {
    let http = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (_, token) = account(&http, &format!("o{}", &run[..12])).await;
    let ws_url = base().replace("http://", "ws://");
    // Side by side: the gateway waits up to 2 s for each client's close frame.
    let codes = futures_util::future::join_all(
        [65_537, 70_000, 100_000, 1_000_000]
            .repeat(3)
            .into_iter()
            .map(|size| {
                let url = format!("{ws_url}/ws?token={token}");
                async move { (size, close_code_after(&url, size).await) }
            }),
    )
    .await;
    assert!(
        codes.iter().all(|(_, code)| *code == Some(1009)),
        "{codes:?}"
    );
}

/// The close code a client reads after sending a text frame of `size` bytes.
async fn close_code_after(url: &str, size: usize) -> Option<u16> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    next_of(&mut ws, "ready").await;
    // The gateway may refuse the frame before all of it is sent: a failed send is fine, what
    // the client reads next is the point.
    let _ = ws.send(Message::Text("x".repeat(size).into())).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("{size} bytes: {e} before a close frame"),
            Ok(None) => panic!("{size} bytes: closed without a close frame"),
            Err(_) => panic!("{size} bytes: no close frame within 10 s"),
        }
    }
}
