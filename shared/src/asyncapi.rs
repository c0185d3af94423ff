//! The AsyncAPI 3 document of the WebSocket protocol (`GET /asyncapi.json`, served by
//! chat-service beside the combined `/openapi.json`). The objects a frame carries (messages,
//! reactions, attachments, chat and message types) are the OpenAPI document's own schemas,
//! generated from the Rust types by utoipa and copied in under `components.schemas`, so the two
//! documents cannot disagree about them; the envelopes and their small `data` objects are
//! written here, and the gateway's tests check every frame named here against its parser and
//! every frame it sends against this list.

use serde_json::{json, Map, Value};

/// The `type` of every frame the server sends, in the order of [`server_frames`].
pub const SERVER_FRAME_TYPES: [&str; 19] = [
    "ready",
    "ack",
    "error",
    "message",
    "message_edited",
    "message_deleted",
    "typing",
    "read",
    "presence",
    "membership",
    "reaction",
    "pin",
    "conversation_updated",
    "conversation_settings",
    "user_updated",
    "synced",
    "token_expiring",
    "reauthed",
    "pong",
];

/// Whether the document describes a server frame of this `type`.
pub fn is_server_frame(kind: &str) -> bool {
    SERVER_FRAME_TYPES.contains(&kind)
}

/// Frames a client sends: `(type, summary, data schema)`.
pub fn client_frames() -> Vec<(&'static str, &'static str, Value)> {
    let chat = chat_ref();
    vec![
        (
            "send_message",
            "Send a message. Answered with `ack {client_id, message}` once stored, or `error {client_id, code}`. A resend with the same `client_id` is never stored twice.",
            object(
                &[
                    ("content", json!({"type": "string", "maxLength": 4000, "description": "1–4000 characters; optional (a caption) with an attachment_id"})),
                    ("chat_type", json!({"$ref": "#/components/schemas/ChatType"})),
                    ("chat_id", uuid("The room or group id; for a private chat, the other user's id")),
                    ("message_type", json!({"$ref": "#/components/schemas/MessageType"})),
                    ("reply_to_id", json!({"type": ["string", "null"], "format": "uuid"})),
                    ("client_id", json!({"type": "string", "minLength": 1, "maxLength": 128, "description": "The client's id for this send (idempotency key)"})),
                    ("attachment_id", json!({"type": ["string", "null"], "format": "uuid", "description": "An upload of the sender's, for `file` and `image`"})),
                ],
                &["chat_type", "chat_id"],
            ),
        ),
        (
            "typing",
            "The user is typing: `typing` goes to the other members' connections; never stored.",
            chat.clone(),
        ),
        (
            "mark_read",
            "The user has read the conversation up to `seq` (at most 10 per second per connection).",
            with_seq(chat.clone()),
        ),
        (
            "sync",
            "Catch up after a reconnect: answered with `synced`. One in flight per connection, 5 a second per user across their sockets (bursts of 40; `rate_limited` beyond); at most 100 positions.",
            object(
                &[(
                    "positions",
                    json!({"type": "array", "maxItems": 100, "items": with_seq(chat)}),
                )],
                &["positions"],
            ),
        ),
        (
            "reauth",
            "A fresh access token of the same user, after `token_expiring`: answered with `reauthed`, or `error {code: invalid_token}`.",
            object(&[("token", json!({"type": "string"}))], &["token"]),
        ),
        ("ping", "Answered with `pong`.", object(&[], &[])),
    ]
}

/// Frames the server sends: `(type, summary, data schema)`.
pub fn server_frames() -> Vec<(&'static str, &'static str, Value)> {
    let chat = chat_ref();
    let message = json!({"$ref": "#/components/schemas/Message"});
    let with = |extra: &[(&str, Value)], required: &[&str]| {
        let mut o = chat.clone();
        for (k, v) in extra {
            o["properties"][*k] = v.clone();
        }
        for r in required {
            if let Some(list) = o["required"].as_array_mut() {
                list.push(json!(r));
            }
        }
        o
    };
    vec![
        (
            "ready",
            "The first frame after the upgrade.",
            object(
                &[
                    ("user_id", uuid("")),
                    ("session_id", json!({"type": "string"})),
                    ("heartbeat_interval_ms", json!({"type": "integer"})),
                ],
                &["user_id", "session_id", "heartbeat_interval_ms"],
            ),
        ),
        (
            "ack",
            "A `send_message` of this connection was stored.",
            object(
                &[("client_id", json!({"type": "string"})), ("message", message.clone())],
                &["client_id", "message"],
            ),
        ),
        (
            "error",
            "A frame was refused; the connection stays open. Codes: invalid_json, unknown_type, invalid_payload, forbidden, not_found, rate_limited, send_failed, muted, blocked, invalid_token, unavailable (the message bus or chat-service is down or behind right now, or, for a send with an attachment, the object store: retry with the same client_id).",
            object(
                &[
                    ("code", json!({"type": "string"})),
                    ("detail", json!({"type": "string"})),
                    ("client_id", json!({"type": ["string", "null"], "description": "The refused send's client_id"})),
                    ("in_reply_to", json!({"type": "string", "enum": ["send_message", "typing", "mark_read", "sync", "reauth", "ping"], "description": "The type of the client frame refused, when it could be read: tells a client which request failed when there is no client_id (a sync, a mark_read)"})),
                    ("retry_after_ms", json!({"type": "integer", "minimum": 0, "description": "With rate_limited: the milliseconds until the same request can succeed (a bucket's next token; for a first message past PRIVATE_CHATS_PER_HOUR, the end of the hour's window). Wait at least this long before asking again"})),
                ],
                &["code", "detail"],
            ),
        ),
        ("message", "A new message, to every connection of every member (the sender's too).", message.clone()),
        ("message_edited", "An edited message.", message),
        (
            "message_deleted",
            "A message was deleted (it stays in history, emptied).",
            with(&[("id", uuid("")), ("seq", seq())], &["id", "seq"]),
        ),
        (
            "typing",
            "A member is typing.",
            with(&[("user_id", uuid(""))], &["user_id"]),
        ),
        (
            "read",
            "A member has read up to `seq` (at most one per reader per conversation per second). The reader's other connections get it too; the connection whose `mark_read` it is does not.",
            with(&[("user_id", uuid("")), ("seq", seq())], &["user_id", "seq"]),
        ),
        (
            "presence",
            "A user who shares a private chat or group came online or went offline (told to at most `PRESENCE_MAX_CONTACTS` of them, those of the most recently active chats).",
            object(
                &[
                    ("user_id", uuid("")),
                    ("status", json!({"type": "string", "enum": ["online", "offline"]})),
                ],
                &["user_id", "status"],
            ),
        ),
        (
            "membership",
            "Someone joined, left, was added or removed, or a moderator acted on them.",
            with(
                &[
                    ("user_id", uuid("")),
                    ("action", json!({"type": "string", "enum": ["joined", "left", "added", "removed", "banned", "unbanned", "muted", "unmuted", "promoted", "demoted"]})),
                    ("by", uuid("Who acted, when it was someone else")),
                    ("until", json!({"type": "string", "format": "date-time"})),
                ],
                &["user_id", "action"],
            ),
        ),
        (
            "reaction",
            "A reaction was added or removed.",
            with(
                &[
                    ("message_id", uuid("")),
                    ("seq", seq()),
                    ("user_id", uuid("")),
                    ("emoji", json!({"type": "string"})),
                    ("action", json!({"type": "string", "enum": ["added", "removed"]})),
                ],
                &["message_id", "seq", "user_id", "emoji", "action"],
            ),
        ),
        (
            "pin",
            "A message was pinned or unpinned.",
            with(
                &[
                    ("message_id", uuid("")),
                    ("seq", seq()),
                    ("pinned", json!({"type": "boolean"})),
                    ("by", uuid("")),
                ],
                &["message_id", "seq", "pinned", "by"],
            ),
        ),
        (
            "conversation_updated",
            "A room's name or description, or a group's name, was changed by its owner (`PATCH /chat/rooms/{id}`, `PATCH /chat/groups/{id}`; an extension).",
            with(
                &[
                    ("name", json!({"type": "string"})),
                    ("description", json!({"type": "string", "description": "A room's description; absent when it has none, and for groups"})),
                    ("by", uuid("The owner who changed it")),
                ],
                &["name", "by"],
            ),
        ),
        (
            "conversation_settings",
            "The user changed their own settings for a conversation, on this device or another (`PUT /chat/conversations/{chat_type}/{chat_id}/notifications`, `PUT`/`DELETE …/archive`; an extension): both settings as they now are, as `GET /chat/conversations` shows them. To the user's connections only. An archived conversation stops being archived when a message comes after it, without this event.",
            with(
                &[
                    ("notifications_muted", json!({"type": "boolean"})),
                    ("notifications_muted_until", json!({"type": ["string", "null"], "format": "date-time", "description": "While muted: until when; null, until unmuted"})),
                    ("archived", json!({"type": "boolean"})),
                ],
                &["notifications_muted", "notifications_muted_until", "archived"],
            ),
        ),
        (
            "user_updated",
            "A user changed their display name or avatar (`PATCH /auth/me`, `PUT /auth/me/avatar`; an extension): the user as `GET /auth/users` now shows them. To the connections of everyone in a room, group or private chat with them, and of the user; once per connection however many conversations it shares with them, and one user's changes in the order they were stored. Missed while disconnected: look the users up again after a reconnect.",
            json!({"$ref": "#/components/schemas/UserSummary"}),
        ),
        (
            "synced",
            "The answer to `sync`: per position, the messages after it that this connection has not already had, ascending (at most 500 each, 5,000 and about 4 MiB in all, positions filled in order; `has_more` marks a position cut short).",
            object(
                &[(
                    "results",
                    json!({"type": "array", "items": with(&[
                        ("messages", json!({"type": "array", "items": {"$ref": "#/components/schemas/Message"}})),
                        ("has_more", json!({"type": "boolean"})),
                    ], &["messages", "has_more"])}),
                )],
                &["results"],
            ),
        ),
        (
            "token_expiring",
            "The connection's access token expires at `expires_at`: answer with `reauth`, or the connection closes with 4001 then.",
            object(&[("expires_at", json!({"type": "string", "format": "date-time"}))], &["expires_at"]),
        ),
        (
            "reauthed",
            "A `reauth` was accepted: the connection now lives until `expires_at`.",
            object(&[("expires_at", json!({"type": "string", "format": "date-time"}))], &["expires_at"]),
        ),
        ("pong", "The answer to `ping`.", object(&[], &[])),
    ]
}

/// The whole document; `schemas` are the OpenAPI document's `components.schemas`.
pub fn document(version: &str, schemas: Value) -> Value {
    let mut messages = Map::new();
    let mut send_refs = Vec::new();
    let mut receive_refs = Vec::new();
    for (direction, frames) in [("client", client_frames()), ("server", server_frames())] {
        for (kind, summary, data) in frames {
            let name = format!("{direction}_{kind}");
            let mut properties = json!({
                "type": {"const": kind},
                "data": data,
            });
            let mut required = vec!["type"];
            if direction == "server" {
                properties["timestamp"] = json!({"type": "string", "format": "date-time"});
                required.extend(["data", "timestamp"]);
            }
            messages.insert(
                name.clone(),
                json!({
                    "name": kind,
                    "title": kind,
                    "summary": summary,
                    "payload": {"type": "object", "required": required, "properties": properties},
                }),
            );
            let reference = json!({"$ref": format!("#/channels/ws/messages/{name}")});
            if direction == "client" {
                send_refs.push(reference);
            } else {
                receive_refs.push(reference);
            }
        }
    }
    let channel_messages: Map<String, Value> = messages
        .keys()
        .map(|name| {
            (
                name.clone(),
                json!({"$ref": format!("#/components/messages/{name}")}),
            )
        })
        .collect();
    json!({
        "asyncapi": "3.1.0",
        "info": {
            "title": "ChatSphere WebSocket protocol",
            "version": version,
            "description": DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": "localhost:8000",
                "protocol": "ws",
                "description": "The public entry (nginx or the ingress); `/ws` is routed to the gateways.",
                "security": [{"$ref": "#/components/securitySchemes/ticket"}, {"$ref": "#/components/securitySchemes/token"}, {"$ref": "#/components/securitySchemes/bearer"}],
            }
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "title": "A user's connection",
                "description": "JSON text frames; with the subprotocol `chatsphere.msgpack`, the same envelopes as MessagePack binary frames.",
                "bindings": {"ws": {"method": "GET", "query": {
                    "type": "object",
                    "properties": {
                        "ticket": {"type": "string", "description": "A one-time ticket from POST /auth/ws-ticket (valid 30 s)"},
                        "token": {"type": "string", "description": "An access token (prefer a ticket: a URL ends up in logs)"},
                    },
                }}},
                "messages": channel_messages,
            }
        },
        "operations": {
            "send": {
                "action": "receive",
                "title": "Frames a client sends",
                "channel": {"$ref": "#/channels/ws"},
                "messages": send_refs,
            },
            "receive": {
                "action": "send",
                "title": "Frames the server sends",
                "channel": {"$ref": "#/channels/ws"},
                "messages": receive_refs,
            },
        },
        "components": {
            "messages": messages,
            "schemas": schemas,
            "securitySchemes": {
                "ticket": {"type": "httpApiKey", "name": "ticket", "in": "query", "description": "From POST /auth/ws-ticket"},
                "token": {"type": "httpApiKey", "name": "token", "in": "query", "description": "An access token"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    })
}

const DESCRIPTION: &str = "Every frame, both ways, is an envelope `{type, data}`; server frames add `timestamp`. \
After the upgrade the server sends `ready`. A bad token is refused with HTTP 401 before the upgrade, \
an `Origin` not allowed with 403, too many sockets of one user with 429, a gateway admitting too many \
upgrades at once with 503 and `Retry-After`.\n\n\
Close codes: 1008 policy violation (repeated abuse), 1009 a frame over 64 KiB, 1012 the gateway is \
restarting (reconnect elsewhere and `sync`), 4001 authentication failed or the token expired (refresh, \
then reconnect), 4008 the client fell too far behind (reconnect and `sync`). The server sends the close \
frame with its code and a short reason and keeps reading for up to 2 s for the client's.\n\n\
Ordering: on one connection a conversation's `message` events arrive in increasing `seq`, never twice, \
with no gaps once it is live. For private chats every `chat_id` is the other user's id from the \
receiver's side.";

fn chat_ref() -> Value {
    object(
        &[
            (
                "chat_type",
                json!({"$ref": "#/components/schemas/ChatType"}),
            ),
            (
                "chat_id",
                uuid("The room or group id; for a private chat, the other user's id"),
            ),
        ],
        &["chat_type", "chat_id"],
    )
}

fn with_seq(mut chat: Value) -> Value {
    chat["properties"]["seq"] = seq();
    if let Some(list) = chat["required"].as_array_mut() {
        list.push(json!("seq"));
    }
    chat
}

fn seq() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": crate::chat::SEQ_LIMIT - 1})
}

fn uuid(description: &str) -> Value {
    let mut v = json!({"type": "string", "format": "uuid"});
    if !description.is_empty() {
        v["description"] = json!(description);
    }
    v
}

fn object(properties: &[(&str, Value)], required: &[&str]) -> Value {
    let properties: Map<String, Value> = properties
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    json!({"type": "object", "required": required, "properties": properties})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_and_every_frame_has_a_message() {
        let doc = document(
            "1",
            json!({"ChatType": {}, "MessageType": {}, "Message": {}, "UserSummary": {}}),
        );
        let text = doc.to_string();
        for target in text.split("\"$ref\":\"#/").skip(1) {
            let path = target.split('"').next().unwrap_or_default();
            let mut node = &doc;
            for part in path.split('/') {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("unresolved $ref #/{path}"));
            }
        }
        let count = client_frames().len() + server_frames().len();
        assert_eq!(
            doc["components"]["messages"].as_object().map(Map::len),
            Some(count)
        );
        assert_eq!(
            doc["operations"]["send"]["messages"]
                .as_array()
                .map(Vec::len),
            Some(client_frames().len())
        );
        let described: Vec<&str> = server_frames().iter().map(|(k, _, _)| *k).collect();
        assert_eq!(described, SERVER_FRAME_TYPES);
    }
}
