// The WebSocket protocol of ChatSphere (see ../../shared/CONTRACT.md beside the project root and
// the AsyncAPI document served at /asyncapi.json): every frame is an envelope
// `{type, data}`; server frames add `timestamp`.
import type { components } from "./generated/api.js";

export type ChatType = "room" | "group" | "private";
export type Message = components["schemas"]["Message"];
export type MessageType = components["schemas"]["MessageType"];

/** A conversation as the client names it: for a private chat `chatId` is the other user. */
export interface ChatRef {
  chat_type: ChatType;
  chat_id: string;
}

export interface SendMessageData extends ChatRef {
  content: string;
  message_type?: MessageType;
  reply_to_id?: string | null;
  client_id?: string;
  attachment_id?: string | null;
}

export interface SyncPosition extends ChatRef {
  seq: number;
}

/** Frames a client sends. */
export type ClientFrame =
  | { type: "send_message"; data: SendMessageData }
  | { type: "typing"; data: ChatRef }
  | { type: "mark_read"; data: ChatRef & { seq: number } }
  | { type: "sync"; data: { positions: SyncPosition[] } }
  | { type: "reauth"; data: { token: string } }
  | { type: "ping"; data: Record<string, never> };

export type MembershipAction =
  | "joined"
  | "left"
  | "added"
  | "removed"
  | "banned"
  | "unbanned"
  | "muted"
  | "unmuted"
  | "promoted"
  | "demoted";

/** The `data` of each frame the server sends, by `type`. */
export interface ServerEvents {
  ready: { user_id: string; session_id: string; heartbeat_interval_ms: number };
  ack: { client_id: string; message: Message };
  /**
   * `in_reply_to`: the type of the client frame refused, when the server could read it;
   * `retry_after_ms`: with `rate_limited`, the wait until the same request can succeed.
   */
  error: { code: string; detail: string; client_id?: string | null; in_reply_to?: string; retry_after_ms?: number };
  message: Message;
  message_edited: Message;
  message_deleted: ChatRef & { id: string; seq: number };
  typing: ChatRef & { user_id: string };
  read: ChatRef & { user_id: string; seq: number };
  presence: { user_id: string; status: "online" | "offline" };
  membership: ChatRef & { user_id: string; action: MembershipAction; by?: string; until?: string };
  reaction: ChatRef & {
    message_id: string;
    seq: number;
    user_id: string;
    emoji: string;
    action: "added" | "removed";
  };
  pin: ChatRef & { message_id: string; seq: number; pinned: boolean; by: string };
  /** A room's name or description, or a group's name, changed (by its owner). */
  conversation_updated: ChatRef & { name: string; description?: string; by: string };
  /**
   * The user's own settings for a conversation changed, on this device or another: both as they
   * now are (as `GET /chat/conversations` shows them).
   */
  conversation_settings: ChatRef & {
    notifications_muted: boolean;
    notifications_muted_until: string | null;
    archived: boolean;
  };
  /**
   * A user who shares a conversation with this one (or this user) changed their display name or
   * avatar: the user as `GET /auth/users` now shows them. Once per conversation shared.
   */
  user_updated: components["schemas"]["UserSummary"];
  synced: { results: Array<ChatRef & { messages: Message[]; has_more: boolean }> };
  token_expiring: { expires_at: string };
  reauthed: { expires_at: string };
  pong: Record<string, never>;
}

export type ServerFrame = {
  [K in keyof ServerEvents]: { type: K; data: ServerEvents[K]; timestamp: string };
}[keyof ServerEvents];

/** Close codes the server uses, and what a client does about each. */
export const CloseCode = {
  /** Repeated abuse: reconnect later, slowly. */
  PolicyViolation: 1008,
  /** A frame over 64 KiB. */
  MessageTooBig: 1009,
  /** The gateway is restarting: reconnect (elsewhere) and sync. */
  Restarting: 1012,
  /** Authentication failed or the token expired: refresh, then reconnect. */
  AuthFailed: 4001,
  /** The client fell too far behind: reconnect and sync. */
  TooSlow: 4008,
} as const;

/** The subprotocol that switches a connection to MessagePack binary frames. */
export const MSGPACK_PROTOCOL = "chatsphere.msgpack";

/** The key of a conversation in maps. */
export function chatKey(chat: ChatRef): string {
  return `${chat.chat_type}:${chat.chat_id}`;
}

/** A private chat's `chat_id` seen from `me`: the other user. */
export function chatOf(message: Message, me: string): ChatRef {
  switch (message.chat_type) {
    case "room":
      return { chat_type: "room", chat_id: message.room_id ?? "" };
    case "group":
      return { chat_type: "group", chat_id: message.group_id ?? "" };
    default: {
      const other = message.from_user_id === me ? message.to_user_id : message.from_user_id;
      return { chat_type: "private", chat_id: other ?? "" };
    }
  }
}
