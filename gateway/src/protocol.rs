//! The WebSocket envelopes of the contract: `{"type", "data"}` from clients, `{"type", "data",
//! "timestamp"}` from the server, as JSON text frames or (subprotocol `chatsphere.msgpack`)
//! MessagePack binary frames with the same shape.

use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{
    chat::{ChatType, MessageType},
    internal::SyncPosition,
};
use tokio_tungstenite::tungstenite::protocol::frame::{
    coding::{Data, OpCode},
    Frame,
};
use uuid::Uuid;

/// The subprotocol that switches a connection to MessagePack.
pub const MSGPACK_PROTOCOL: &str = "chatsphere.msgpack";

/// The deepest nesting a MessagePack frame may have.
pub const MAX_MSGPACK_DEPTH: usize = 16;

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    MsgPack,
}

/// `send_message`
#[derive(Debug, Clone, Deserialize)]
pub struct SendMessage {
    /// Optional with an `attachment_id` (a caption).
    #[serde(default)]
    pub content: String,
    pub chat_type: ChatType,
    pub chat_id: Uuid,
    #[serde(default)]
    pub message_type: MessageType,
    pub reply_to_id: Option<Uuid>,
    pub client_id: Option<String>,
    /// An upload of the sender's, for `file` and `image` (content is then a caption).
    #[serde(default)]
    pub attachment_id: Option<Uuid>,
}

/// `typing`
#[derive(Debug, Clone, Deserialize)]
pub struct Typing {
    pub chat_type: ChatType,
    pub chat_id: Uuid,
}

/// `mark_read`
#[derive(Debug, Clone, Deserialize)]
pub struct MarkRead {
    pub chat_type: ChatType,
    pub chat_id: Uuid,
    pub seq: i64,
}

/// `sync`
#[derive(Debug, Clone, Deserialize)]
pub struct Sync {
    pub positions: Vec<SyncPosition>,
}

/// `reauth`: a fresh access token of the same user, before the connection's expires.
#[derive(Debug, Clone, Deserialize)]
pub struct Reauth {
    pub token: String,
}

/// A frame a client may send.
#[derive(Debug, Clone)]
pub enum ClientFrame {
    SendMessage(SendMessage),
    Typing(Typing),
    MarkRead(MarkRead),
    Sync(Sync),
    Reauth(Reauth),
    Ping,
}

impl ClientFrame {
    /// The `type` label, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ClientFrame::SendMessage(_) => "send_message",
            ClientFrame::Typing(_) => "typing",
            ClientFrame::MarkRead(_) => "mark_read",
            ClientFrame::Sync(_) => "sync",
            ClientFrame::Reauth(_) => "reauth",
            ClientFrame::Ping => "ping",
        }
    }
}

/// A bad frame: answered with `error`, the connection stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub code: &'static str,
    pub detail: String,
    /// The `client_id` of a refused `send_message`, when it had one.
    pub client_id: Option<String>,
    /// The type of the frame this answers, when it is known (see [`ErrorData::in_reply_to`]).
    pub in_reply_to: Option<&'static str>,
    /// For `rate_limited`: how long until the same request can succeed.
    pub retry_after_ms: Option<u64>,
}

impl FrameError {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            client_id: None,
            in_reply_to: None,
            retry_after_ms: None,
        }
    }

    /// Says how long until the same request can succeed (`retry_after_ms`, whole milliseconds,
    /// rounded up).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_ms =
            Some(u64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u64::MAX));
        self
    }

    /// A refused `send_message` with `client_id`.
    pub fn send(code: &'static str, detail: impl Into<String>, client_id: String) -> Self {
        Self {
            client_id: Some(client_id),
            in_reply_to: Some("send_message"),
            ..Self::new(code, detail)
        }
    }

    /// Names the type of the frame refused, unless it is named already.
    pub fn answering(mut self, kind: &'static str) -> Self {
        self.in_reply_to.get_or_insert(kind);
        self
    }

    /// The `error` frame's data.
    pub fn data(&self) -> ErrorData<'_> {
        ErrorData {
            client_id: self.client_id.as_deref(),
            code: self.code,
            detail: &self.detail,
            in_reply_to: self.in_reply_to,
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// The data of an `error` frame.
#[derive(Debug, Serialize)]
pub struct ErrorData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    pub code: &'a str,
    pub detail: &'a str,
    /// The `type` of the client frame refused (`send_message`, `sync`, `mark_read`, …), so
    /// that a client can tell which request failed when it carries no `client_id`. Absent when
    /// the frame's type could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<&'a str>,
    /// With `rate_limited`: the milliseconds until the same request can succeed, when the
    /// server knows (a send's, a typing's, a `mark_read`'s or a sync's bucket refilling, a
    /// quota's window ending). A client waits at least this long before asking again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The client frame types, as [`ClientFrame::label`] names them.
const CLIENT_TYPES: [&str; 6] = [
    "send_message",
    "typing",
    "mark_read",
    "sync",
    "reauth",
    "ping",
];

/// `kind` as one of [`CLIENT_TYPES`], if it is one.
fn client_type(kind: Option<&str>) -> Option<&'static str> {
    kind.and_then(|k| CLIENT_TYPES.iter().copied().find(|t| *t == k))
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

/// Decodes a frame's bytes (JSON text or MessagePack) into a generic value.
pub fn decode_value(encoding: Encoding, bytes: &[u8]) -> Result<Value, FrameError> {
    match encoding {
        Encoding::Json => serde_json::from_slice(bytes)
            .map_err(|e| FrameError::new("invalid_json", format!("malformed JSON: {e}"))),
        Encoding::MsgPack => {
            let mut de = rmp_serde::Deserializer::new(bytes).with_human_readable();
            // No envelope nests deeper than a few levels; a bound keeps a hostile frame from
            // costing deep recursion (JSON has serde_json's own limit of 128).
            de.set_max_depth(MAX_MSGPACK_DEPTH);
            let value = Value::deserialize(&mut de).map_err(|e| {
                FrameError::new("invalid_json", format!("malformed MessagePack: {e}"))
            })?;
            // One value per frame, as JSON has it: bytes after it are not silently dropped.
            let rest = de.get_ref().len();
            if rest > 0 {
                return Err(FrameError::new(
                    "invalid_json",
                    format!("malformed MessagePack: {rest} bytes after the value"),
                ));
            }
            Ok(value)
        }
    }
}

fn data<T: serde::de::DeserializeOwned>(kind: &str, data: Value) -> Result<T, FrameError> {
    let data = if data.is_null() {
        Value::Object(Default::default())
    } else {
        data
    };
    serde_path_to_error::deserialize(data).map_err(|e| {
        let field =
            shared::extract::field_name(&e.path().to_string(), &e.inner().to_string(), "data");
        FrameError::new("invalid_payload", format!("{kind}: {field}: {}", e.inner()))
    })
}

fn check_seq(field: &str, seq: i64) -> Result<(), FrameError> {
    if shared::chat::is_client_seq(seq) {
        Ok(())
    } else {
        Err(FrameError::new(
            "invalid_payload",
            format!("{field}: {}", shared::chat::SEQ_RANGE),
        ))
    }
}

/// Parses an envelope into a client frame.
pub fn parse(value: Value) -> Result<ClientFrame, FrameError> {
    let client_id = value
        .get("data")
        .and_then(|d| d.get("client_id"))
        .and_then(Value::as_str)
        .filter(|c| shared::text::check(c).is_ok())
        .map(str::to_owned);
    if let Some((field, problem)) = shared::text::find_in_json(&value, "frame") {
        let mut e = FrameError::new("invalid_payload", format!("{field}: {problem}"));
        e.in_reply_to = client_type(value.get("type").and_then(Value::as_str));
        if e.in_reply_to == Some("send_message") {
            e.client_id = client_id;
        }
        return Err(e);
    }
    let envelope: Envelope = serde_json::from_value(value).map_err(|_| {
        FrameError::new(
            "invalid_payload",
            "expected an envelope {\"type\": ..., \"data\": {...}}",
        )
    })?;
    let parsed = match envelope.kind.as_str() {
        "send_message" => data(&envelope.kind, envelope.data).map(ClientFrame::SendMessage),
        "typing" => data(&envelope.kind, envelope.data).map(ClientFrame::Typing),
        "mark_read" => data::<MarkRead>(&envelope.kind, envelope.data)
            .and_then(|r| check_seq("seq", r.seq).map(|()| ClientFrame::MarkRead(r))),
        "sync" => data::<Sync>(&envelope.kind, envelope.data).and_then(|s| {
            for (i, p) in s.positions.iter().enumerate() {
                check_seq(&format!("positions[{i}].seq"), p.seq)?;
            }
            Ok(ClientFrame::Sync(s))
        }),
        "reauth" => data(&envelope.kind, envelope.data).map(ClientFrame::Reauth),
        "ping" => Ok(ClientFrame::Ping),
        other => Err(FrameError::new(
            "unknown_type",
            format!("unknown frame type {other:?}"),
        )),
    };
    parsed.map_err(|mut e| {
        e.in_reply_to = client_type(Some(&envelope.kind));
        if envelope.kind == "send_message" {
            e.client_id = client_id;
        }
        e
    })
}

#[derive(Serialize)]
struct ServerEnvelope<'a, D: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a D,
    timestamp: chrono::DateTime<Utc>,
}

/// A server frame as it goes on the wire: the WebSocket frame (header and payload, unmasked as
/// server frames are), framed once and shared, when cloned, by every connection that sends it.
/// Connections write these bytes straight to their socket.
#[derive(Debug, Clone)]
pub struct WireFrame {
    bytes: Bytes,
    header_len: usize,
}

impl WireFrame {
    /// A final text (`Data::Text`) or binary (`Data::Binary`) frame carrying `payload`.
    pub fn new(kind: Data, payload: Vec<u8>) -> Result<Self, String> {
        let payload_len = payload.len();
        let mut bytes = Vec::with_capacity(payload_len + 10);
        Frame::message(payload, OpCode::Data(kind), true)
            .format(&mut bytes)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            header_len: bytes.len() - payload_len,
            bytes: Bytes::from(bytes),
        })
    }

    /// The frame's bytes, header included.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The payload alone (the envelope).
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }
}

/// Encodes a server frame.
pub fn encode<D: Serialize>(encoding: Encoding, kind: &str, data: &D) -> Result<WireFrame, String> {
    // Every frame the gateway sends is described in the AsyncAPI document; the test suites
    // (debug builds) stop on one that is not.
    debug_assert!(
        shared::asyncapi::is_server_frame(kind),
        "server frame {kind:?} is missing from shared::asyncapi"
    );
    let envelope = ServerEnvelope {
        kind,
        data,
        timestamp: Utc::now(),
    };
    match encoding {
        Encoding::Json => {
            let json = serde_json::to_vec(&envelope).map_err(|e| e.to_string())?;
            WireFrame::new(Data::Text, json)
        }
        Encoding::MsgPack => {
            let mut buf = Vec::with_capacity(256);
            let mut ser = rmp_serde::Serializer::new(&mut buf)
                .with_struct_map()
                .with_human_readable();
            envelope.serialize(&mut ser).map_err(|e| e.to_string())?;
            WireFrame::new(Data::Binary, buf)
        }
    }
}

/// A frame encoded at most once per encoding, shared by every connection that receives it.
pub struct SharedFrame<'a, D: Serialize> {
    kind: &'a str,
    data: &'a D,
    json: Option<WireFrame>,
    msgpack: Option<WireFrame>,
}

impl<'a, D: Serialize> SharedFrame<'a, D> {
    pub fn new(kind: &'a str, data: &'a D) -> Self {
        debug_assert!(
            shared::asyncapi::is_server_frame(kind),
            "server frame {kind:?} is missing from shared::asyncapi"
        );
        Self {
            kind,
            data,
            json: None,
            msgpack: None,
        }
    }

    /// The frame for `encoding`; cloning it shares the bytes.
    pub fn get(&mut self, encoding: Encoding) -> Option<WireFrame> {
        let slot = match encoding {
            Encoding::Json => &mut self.json,
            Encoding::MsgPack => &mut self.msgpack,
        };
        if slot.is_none() {
            match encode(encoding, self.kind, self.data) {
                Ok(m) => *slot = Some(m),
                Err(e) => tracing::error!(error = %e, "could not encode a frame"),
            }
        }
        slot.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(s: &str) -> Result<ClientFrame, FrameError> {
        parse(decode_value(Encoding::Json, s.as_bytes())?)
    }

    /// `in_reply_to` names a frame the way [`ClientFrame::label`] does, every type included.
    #[test]
    fn every_client_type_is_named_as_its_label() {
        let id = Uuid::nil();
        let frames = [
            format!(
                r#"{{"type":"send_message","data":{{"content":"hi","chat_type":"room","chat_id":"{id}"}}}}"#
            ),
            format!(r#"{{"type":"typing","data":{{"chat_type":"room","chat_id":"{id}"}}}}"#),
            format!(
                r#"{{"type":"mark_read","data":{{"chat_type":"room","chat_id":"{id}","seq":1}}}}"#
            ),
            r#"{"type":"sync","data":{"positions":[]}}"#.to_owned(),
            r#"{"type":"reauth","data":{"token":"t"}}"#.to_owned(),
            r#"{"type":"ping"}"#.to_owned(),
        ];
        let labels: Result<Vec<&str>, FrameError> = frames
            .iter()
            .map(|f| parse_json(f).map(|frame| frame.label()))
            .collect();
        assert_eq!(labels, Ok(CLIENT_TYPES.to_vec()));
        for label in CLIENT_TYPES {
            assert_eq!(client_type(Some(label)), Some(label));
        }
        assert_eq!(client_type(Some("dance")), None);
    }

    #[test]
    fn frames_parse_or_say_why_not() {
        assert!(matches!(
            parse_json(r#"{"type":"ping","data":{}}"#),
            Ok(ClientFrame::Ping)
        ));
        assert!(matches!(
            parse_json(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        ));
        let id = Uuid::new_v4();
        let f = parse_json(&format!(
            r#"{{"type":"send_message","data":{{"content":"hi","chat_type":"room","chat_id":"{id}","client_id":"c1"}}}}"#
        ));
        assert!(
            matches!(f, Ok(ClientFrame::SendMessage(m)) if m.chat_id == id && m.message_type == MessageType::Text)
        );

        assert_eq!(parse_json("{nope").unwrap_err().code, "invalid_json");
        assert_eq!(
            parse_json(r#"{"type":"dance","data":{}}"#)
                .unwrap_err()
                .code,
            "unknown_type"
        );
        assert_eq!(parse_json(r#"[1,2]"#).unwrap_err().code, "invalid_payload");
        let e = parse_json(r#"{"type":"send_message","data":{"content":"hi","chat_type":"room","chat_id":"x","client_id":"c9"}}"#)
            .unwrap_err();
        assert_eq!(e.code, "invalid_payload");
        assert!(e.detail.contains("chat_id"), "{}", e.detail);
        assert_eq!(e.client_id.as_deref(), Some("c9"));
        assert_eq!(
            parse_json(r#"{"type":"mark_read","data":{"chat_type":"room"}}"#)
                .unwrap_err()
                .code,
            "invalid_payload"
        );
    }

    #[test]
    fn frames_are_framed_once_as_the_wire_wants_them() {
        let short = WireFrame::new(Data::Text, b"hi".to_vec()).unwrap();
        assert_eq!(&short.bytes()[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(short.payload(), b"hi");
        let long = WireFrame::new(Data::Text, vec![b'x'; 300]).unwrap();
        assert_eq!(&long.bytes()[..4], &[0x81, 126, 1, 44], "16-bit length 300");
        assert_eq!(long.payload().len(), 300);
        let json = encode(Encoding::Json, "pong", &serde_json::json!({})).unwrap();
        let value: Value = serde_json::from_slice(json.payload()).unwrap();
        assert_eq!(value["type"], "pong");
    }

    #[test]
    fn control_characters_and_wild_seqs_are_invalid_payload() {
        let e = parse_json(
            r#"{"type":"send_message","data":{"content":"a\u0000b","chat_type":"room","chat_id":"00000000-0000-0000-0000-000000000000","client_id":"c1"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, "invalid_payload");
        assert_eq!(e.client_id.as_deref(), Some("c1"));
        assert!(e.detail.contains("data.content"), "{}", e.detail);
        // A bad client_id is not echoed back.
        let e = parse_json(
            r#"{"type":"send_message","data":{"content":"hi","chat_type":"room","chat_id":"00000000-0000-0000-0000-000000000000","client_id":"c\u001b"}}"#,
        )
        .unwrap_err();
        assert_eq!((e.code, e.client_id), ("invalid_payload", None));
        let id = "00000000-0000-0000-0000-000000000000";
        for seq in ["-1", "9007199254740992", "1.5", "1e300", "\"3\""] {
            let frame = format!(
                r#"{{"type":"mark_read","data":{{"chat_type":"room","chat_id":"{id}","seq":{seq}}}}}"#
            );
            assert_eq!(
                parse_json(&frame).unwrap_err().code,
                "invalid_payload",
                "{seq}"
            );
            let frame = format!(
                r#"{{"type":"sync","data":{{"positions":[{{"chat_type":"room","chat_id":"{id}","seq":{seq}}}]}}}}"#
            );
            assert_eq!(
                parse_json(&frame).unwrap_err().code,
                "invalid_payload",
                "{seq}"
            );
        }
        let frame = format!(
            r#"{{"type":"mark_read","data":{{"chat_type":"room","chat_id":"{id}","seq":9007199254740991}}}}"#
        );
        assert!(parse_json(&frame).is_ok());
    }

    #[test]
    fn deep_messagepack_is_refused() {
        // 1000 nested one-element arrays, then nil.
        let mut bytes = vec![0x91; 1000];
        bytes.push(0xc0);
        assert_eq!(
            decode_value(Encoding::MsgPack, &bytes).unwrap_err().code,
            "invalid_json"
        );
        let mut shallow = vec![0x91; 4];
        shallow.push(0xc0);
        assert!(decode_value(Encoding::MsgPack, &shallow).is_ok());
    }

    #[test]
    fn a_frame_is_one_value_in_either_encoding() {
        let ping =
            rmp_serde::to_vec_named(&serde_json::json!({"type": "ping", "data": {}})).unwrap();
        assert!(decode_value(Encoding::MsgPack, &ping).is_ok());
        let mut trailing = ping.clone();
        trailing.push(0xc0);
        let e = decode_value(Encoding::MsgPack, &trailing).unwrap_err();
        assert_eq!(
            (e.code, e.detail.as_str()),
            (
                "invalid_json",
                "malformed MessagePack: 1 bytes after the value"
            )
        );
        let mut two = ping.clone();
        two.extend_from_slice(&ping);
        assert_eq!(
            decode_value(Encoding::MsgPack, &two).unwrap_err().code,
            "invalid_json"
        );
        assert_eq!(
            decode_value(Encoding::Json, br#"{"type":"ping","data":{}} {}"#)
                .unwrap_err()
                .code,
            "invalid_json"
        );
    }

    #[test]
    fn msgpack_round_trip() {
        let id = Uuid::new_v4();
        let frame = encode(Encoding::MsgPack, "pong", &serde_json::json!({"id": id})).unwrap();
        assert_eq!(frame.bytes()[0], 0x82, "a final binary frame");
        let value = decode_value(Encoding::MsgPack, frame.payload()).unwrap();
        assert_eq!(value["type"], "pong");
        assert_eq!(
            value["data"]["id"],
            id.to_string(),
            "uuids are strings for clients"
        );
        assert!(value["timestamp"].is_string());
    }

    /// Each client frame the AsyncAPI document names, with its required fields, is accepted;
    /// and every frame type the parser accepts is in the document.
    #[test]
    fn the_asyncapi_document_and_the_parser_agree() {
        let id = Uuid::nil();
        let example = |kind: &str| -> serde_json::Value {
            let data = match kind {
                "send_message" => {
                    serde_json::json!({"content": "hi", "chat_type": "room", "chat_id": id})
                }
                "typing" => serde_json::json!({"chat_type": "group", "chat_id": id}),
                "mark_read" => serde_json::json!({"chat_type": "private", "chat_id": id, "seq": 3}),
                "sync" => {
                    serde_json::json!({"positions": [{"chat_type": "room", "chat_id": id, "seq": 0}]})
                }
                "reauth" => serde_json::json!({"token": "t"}),
                "ping" => serde_json::json!({}),
                other => panic!("no example for the documented client frame {other:?}"),
            };
            serde_json::json!({"type": kind, "data": data})
        };
        let documented: Vec<&str> = shared::asyncapi::client_frames()
            .iter()
            .map(|(kind, _, _)| *kind)
            .collect();
        for kind in &documented {
            let frame = parse(example(kind)).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
            assert_eq!(frame.label(), *kind);
        }
        assert_eq!(
            documented.len(),
            6,
            "a new client frame needs an example here"
        );
    }
}
