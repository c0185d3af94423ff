import { decode, encode } from "@msgpack/msgpack";

import { Backoff } from "./backoff.js";
import { ChatSphereError, Emitter } from "./events.js";
import {
  chatKey,
  chatOf,
  CloseCode,
  MSGPACK_PROTOCOL,
  type ChatRef,
  type ClientFrame,
  type Message,
  type SendMessageData,
  type ServerEvents,
  type ServerFrame,
  type SyncPosition,
} from "./protocol.js";

/** The part of the WebSocket API the client uses (the browser's, or `ws` in Node). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly protocol: string;
  send(data: string | ArrayBufferLike | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** How the socket authenticates; `ChatSphere` implements it from its session. */
export interface SocketAuth {
  /** Query parameters of the upgrade: a one-time `ticket` (preferred) or a `token`. */
  connectParams(): Promise<Record<string, string>>;
  /** A fresh access token of the same user, for `reauth`. */
  freshToken(): Promise<string>;
  /** After a 4001 close: refresh the login, or throw when it cannot be (the socket then stops). */
  renew(): Promise<void>;
}

export interface SocketOptions {
  /** The gateway's `/ws` URL, or a function giving one for each attempt. */
  url: string | (() => string);
  auth: SocketAuth;
  /** `json` (text frames, the default) or `msgpack` (binary frames, subprotocol `chatsphere.msgpack`). */
  encoding?: "json" | "msgpack";
  /** The WebSocket implementation; defaults to the global one. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect pacing; defaults to 250 ms doubling up to 15 s, full jitter. */
  backoff?: Backoff;
  /** Positions to resume from: each conversation's last seen `seq`. */
  positions?: SyncPosition[];
}

export type SocketState = "connecting" | "open" | "reconnecting" | "closed";

/** What a listener of each event gets. */
export interface SocketEvents {
  /** A new message, live or caught up by `sync`: once per conversation and `seq`, in order. */
  message: [message: Message, chat: ChatRef];
  message_edited: [message: Message, chat: ChatRef];
  message_deleted: [data: ServerEvents["message_deleted"]];
  typing: [data: ServerEvents["typing"]];
  read: [data: ServerEvents["read"]];
  presence: [data: ServerEvents["presence"]];
  membership: [data: ServerEvents["membership"]];
  reaction: [data: ServerEvents["reaction"]];
  pin: [data: ServerEvents["pin"]];
  conversation_updated: [data: ServerEvents["conversation_updated"]];
  /** The user muted, unmuted, archived or unarchived a conversation, on any device. */
  conversation_settings: [data: ServerEvents["conversation_settings"]];
  /**
   * Someone who shares a conversation with the user, or the user, changed their display name or
   * avatar (`ChatSphere.connect()` sockets have already put it in `users`).
   */
  user_updated: [user: ServerEvents["user_updated"]];
  /** A `reauth` was accepted: the connection now lives until `expires_at`. */
  reauthed: [data: ServerEvents["reauthed"]];
  /** The connection is ready (after every reconnect too). */
  ready: [data: ServerEvents["ready"]];
  state: [state: SocketState];
  /** A close, with the server's code and reason. */
  close: [code: number, reason: string];
  /** An `error` frame not tied to a send of the outbox. */
  error: [error: ChatSphereError];
  /** The socket stopped for good: authentication could not be renewed. */
  stopped: [reason: Error];
}

interface Pending {
  data: SendMessageData & { client_id: string };
  /** Written on the current connection and not answered yet. */
  written: boolean;
  resolve: (message: Message) => void;
  reject: (error: ChatSphereError) => void;
}

/** Per conversation: the last `seq` delivered in order, and messages held behind a gap. */
interface Track {
  chat: ChatRef;
  seq: number;
  held: Map<number, Message>;
}

const MAX_SYNC_POSITIONS = 100;
const READ_FLUSH_MS = 150;
const TYPING_EVERY_MS = 3000;
const RATE_LIMITED_RETRY_MS = 1000;
/**
 * The longest `retry_after_ms` the outbox waits out: a send told to wait longer (a quota's
 * hour) is rejected with `rate_limited` and its `retryAfterMs`, and the others go on.
 */
const MAX_OUTBOX_HOLD_MS = 30_000;
const OPEN = 1;

/**
 * A WebSocket connection to ChatSphere that stays connected: it reconnects with jittered
 * back-off, resumes every conversation from its last seen `seq` with `sync`, delivers each
 * message once and in order (holding messages behind a gap until `sync` fills it), resends its
 * outbox (keyed by `client_id`, so a resend is never stored twice) and answers `token_expiring`
 * with `reauth`.
 *
 * The outbox sends in order. When the server refuses a send with `rate_limited` or
 * `unavailable`, the whole outbox waits (`retry_after_ms`, or a growing back-off while the
 * service is unavailable), then goes one send at a time, each written once the one before is
 * answered, until it is empty: sends made meanwhile never overtake the refused one, and a burst
 * past the rate is not resent whole on every refill.
 */
export class ChatSocket extends Emitter<SocketEvents> {
  private ws: WebSocketLike | null = null;
  private current: SocketState = "connecting";
  private stoppedByUser = false;
  private me: string | null = null;
  private readonly tracks = new Map<string, Track>();
  private readonly outbox = new Map<string, Pending>();
  private readonly syncWanted = new Set<string>();
  private syncInFlight = false;
  /** The conversations (keys) of the sync in flight: asked for again if it fails. */
  private syncing: string[] = [];
  private readonly reads = new Map<string, ChatRef & { seq: number }>();
  private readTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly typingSent = new Map<string, number>();
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private lastHeard = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** While set, the outbox writes nothing (a refusal's wait); at its end it writes again. */
  private outboxTimer: ReturnType<typeof setTimeout> | null = null;
  private outboxHeldUntil = 0;
  /** After a refusal: one send in flight at a time until the outbox is empty. */
  private paced = false;
  private readonly unavailableBackoff = new Backoff(500, 30_000);
  private readonly backoff: Backoff;
  private readonly encoding: "json" | "msgpack";
  private readonly WS: WebSocketConstructor;

  constructor(private readonly options: SocketOptions) {
    super();
    this.backoff = options.backoff ?? new Backoff();
    this.encoding = options.encoding ?? "json";
    const ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ctor) {
      throw new Error("no WebSocket implementation: pass one as options.WebSocket (e.g. the `ws` package)");
    }
    this.WS = ctor;
    for (const p of options.positions ?? []) this.track(p, p.seq);
    void this.connect();
  }

  /** The connection's state. */
  get state(): SocketState {
    return this.current;
  }

  /** The user this socket belongs to (known once ready). */
  get userId(): string | null {
    return this.me;
  }

  /** Sends not yet acknowledged, oldest first. */
  get pending(): SendMessageData[] {
    return [...this.outbox.values()].map((p) => p.data);
  }

  /** Each tracked conversation's last `seq` delivered in order. */
  positions(): SyncPosition[] {
    return [...this.tracks.values()].map((t) => ({ ...t.chat, seq: t.seq }));
  }

  /**
   * Follows a conversation from `seq` (e.g. the last message of a history page the app showed):
   * later messages are delivered in order, and a reconnect syncs from there. Never moves a
   * position backwards.
   */
  track(chat: ChatRef, seq: number): void {
    const key = chatKey(chat);
    const t = this.tracks.get(key);
    if (!t) {
      this.tracks.set(key, { chat: { chat_type: chat.chat_type, chat_id: chat.chat_id }, seq, held: new Map() });
      if (this.current === "open") this.requestSync([key]);
    } else if (seq > t.seq) {
      t.seq = seq;
      this.release(t);
    }
  }

  /**
   * Sends a message; resolves with the stored message on `ack`. The send stays in the outbox
   * across reconnects (resent with the same `client_id`, never stored twice) until it is
   * acknowledged or refused (rejects with the server's `error` code).
   */
  send(chat: ChatRef, content: string, extra: Omit<SendMessageData, keyof ChatRef | "content"> = {}): Promise<Message> {
    if (this.stoppedByUser) {
      return Promise.reject(new ChatSphereError("closed", "the socket is closed"));
    }
    const client_id = extra.client_id ?? randomId();
    const existing = this.outbox.get(client_id);
    if (existing) {
      return new Promise((resolve, reject) => {
        const { resolve: r0, reject: j0 } = existing;
        existing.resolve = (m) => (r0(m), resolve(m));
        existing.reject = (e) => (j0(e), reject(e));
      });
    }
    return new Promise((resolve, reject) => {
      const data = { ...extra, chat_type: chat.chat_type, chat_id: chat.chat_id, content, client_id };
      this.outbox.set(client_id, { data, written: false, resolve, reject });
      this.flushOutbox();
    });
  }

  /** Tells the other members the user is typing (at most once every 3 s per conversation). */
  typing(chat: ChatRef): void {
    const key = chatKey(chat);
    const now = Date.now();
    if (this.current !== "open" || now - (this.typingSent.get(key) ?? 0) < TYPING_EVERY_MS) return;
    this.typingSent.set(key, now);
    this.write({ type: "typing", data: { chat_type: chat.chat_type, chat_id: chat.chat_id } });
  }

  /** Marks a conversation read up to `seq`; reads are gathered and sent a few times a second. */
  markRead(chat: ChatRef, seq: number): void {
    const key = chatKey(chat);
    const prev = this.reads.get(key);
    if (prev && prev.seq >= seq) return;
    this.reads.set(key, { chat_type: chat.chat_type, chat_id: chat.chat_id, seq });
    this.readTimer ??= setTimeout(() => this.flushReads(), READ_FLUSH_MS);
  }

  /** Closes the connection for good; pending sends are rejected. */
  close(): void {
    this.stoppedByUser = true;
    this.clearTimers();
    this.ws?.close(1000, "client closed");
    this.ws = null;
    this.rejectOutbox(new ChatSphereError("closed", "the socket was closed"));
    this.setState("closed");
  }

  // --- connection ---------------------------------------------------------------------------

  private async connect(): Promise<void> {
    if (this.stoppedByUser) return;
    let params: Record<string, string>;
    try {
      params = await this.options.auth.connectParams();
    } catch (e) {
      if (isAuthError(e)) return this.stop(e as Error);
      return this.scheduleReconnect();
    }
    if (this.stoppedByUser) return;
    const base = typeof this.options.url === "function" ? this.options.url() : this.options.url;
    const url = new URL(base);
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url.toString(), this.encoding === "msgpack" ? [MSGPACK_PROTOCOL] : undefined);
    } catch {
      return this.scheduleReconnect();
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      const frame = this.decodeFrame(ev.data);
      if (frame) this.handle(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onClosed(ev.code, ev.reason);
    };
    ws.onerror = () => {
      // A close event follows; that is where the reconnect is decided.
    };
  }

  private onClosed(code: number, reason: string): void {
    this.clearTimers();
    this.syncInFlight = false;
    this.syncing = [];
    this.emit("close", code, reason);
    if (this.stoppedByUser) return;
    if (code === CloseCode.AuthFailed) {
      this.setState("reconnecting");
      this.options.auth.renew().then(
        () => this.scheduleReconnect(),
        (e: unknown) => this.stop(e instanceof Error ? e : new Error(String(e))),
      );
      return;
    }
    this.scheduleReconnect(code === CloseCode.PolicyViolation ? 5000 : 0);
  }

  private scheduleReconnect(atLeastMs = 0): void {
    if (this.stoppedByUser) return;
    this.setState("reconnecting");
    const wait = atLeastMs > 0 ? this.backoff.atLeast(atLeastMs) : this.backoff.next();
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.connect();
    }, wait);
  }

  private stop(reason: Error): void {
    this.stoppedByUser = true;
    this.clearTimers();
    this.ws?.close(1000, "authentication ended");
    this.ws = null;
    this.rejectOutbox(new ChatSphereError("unauthorized", reason.message));
    this.setState("closed");
    this.emit("stopped", reason);
  }

  private setState(state: SocketState): void {
    if (this.current === state) return;
    this.current = state;
    this.emit("state", state);
  }

  private clearTimers(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.readTimer) clearTimeout(this.readTimer);
    this.heartbeat = this.retryTimer = this.readTimer = null;
  }

  private onReady(data: ServerEvents["ready"]): void {
    this.me = data.user_id;
    this.backoff.reset();
    this.setState("open");
    // The server pings at the protocol level, which browsers do not show: an application
    // `ping` every interval tells a dead connection from a quiet one.
    const every = Math.max(1000, data.heartbeat_interval_ms);
    this.lastHeard = Date.now();
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastHeard > every * 3) {
        this.ws?.close(4000, "no answer to pings");
        const ws = this.ws;
        this.ws = null;
        if (ws) this.onClosed(1006, "no answer to pings");
        return;
      }
      this.write({ type: "ping", data: {} });
    }, every);
    this.emit("ready", data);
    this.requestSync([...this.tracks.keys()]);
    // Nothing written on the old connection will be answered: all of it goes again.
    for (const p of this.outbox.values()) p.written = false;
    this.flushOutbox();
    if (this.reads.size > 0) this.flushReads();
  }

  // --- frames ---------------------------------------------------------------------------------

  private write(frame: ClientFrame): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return;
    ws.send(this.encoding === "msgpack" ? encode(frame) : JSON.stringify(frame));
  }

  private decodeFrame(data: unknown): ServerFrame | null {
    try {
      if (typeof data === "string") return JSON.parse(data) as ServerFrame;
      if (data instanceof ArrayBuffer) return decode(new Uint8Array(data)) as ServerFrame;
      if (ArrayBuffer.isView(data)) {
        return decode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)) as ServerFrame;
      }
    } catch {
      // Not a frame of the protocol; ignored.
    }
    return null;
  }

  private handle(frame: ServerFrame): void {
    switch (frame.type) {
      case "ready":
        return this.onReady(frame.data);
      case "message":
        return this.onMessage(frame.data);
      case "synced":
        return this.onSynced(frame.data);
      case "ack": {
        const p = this.outbox.get(frame.data.client_id);
        if (p) {
          this.outbox.delete(frame.data.client_id);
          this.unavailableBackoff.reset();
          if (this.outbox.size === 0) this.paced = false;
          p.resolve(frame.data.message);
          this.flushOutbox();
        }
        return;
      }
      case "error":
        return this.onError(frame.data);
      case "token_expiring":
        this.options.auth.freshToken().then(
          (token) => this.write({ type: "reauth", data: { token } }),
          () => {
            // Without a fresh token the server closes with 4001 at expiry; renew() runs then.
          },
        );
        return;
      case "message_edited":
        return this.emit("message_edited", frame.data, this.chatOf(frame.data));
      case "reauthed":
      case "message_deleted":
      case "typing":
      case "read":
      case "presence":
      case "membership":
      case "reaction":
      case "pin":
      case "conversation_updated":
      case "conversation_settings":
      case "user_updated":
        return (this.emit as (t: string, d: unknown) => void)(frame.type, frame.data);
      default:
        return; // pong, and types newer than this client
    }
  }

  private onError(data: ServerEvents["error"]): void {
    const error = new ChatSphereError(data.code, data.detail);
    const pending = data.client_id ? this.outbox.get(data.client_id) : undefined;
    if (!pending) {
      // The sync's answer (chat-service unavailable, busy, a second sync refused): its
      // conversations are asked for again shortly. A server that does not name the frame an
      // error answers (`in_reply_to`) is taken to mean the sync by any error without a
      // client_id while one is under way; were it another frame's, the sync is asked twice.
      const forSync = data.in_reply_to === undefined || data.in_reply_to === "sync";
      if (this.syncInFlight && forSync) {
        this.syncInFlight = false;
        for (const key of this.syncing.splice(0)) this.syncWanted.add(key);
        setTimeout(() => this.requestSync([]), RATE_LIMITED_RETRY_MS);
      }
      this.emit("error", error);
      return;
    }
    const wait =
      data.code === "rate_limited"
        ? (data.retry_after_ms ?? RATE_LIMITED_RETRY_MS)
        : data.code === "unavailable"
          ? this.unavailableBackoff.next()
          : null;
    if (wait !== null && wait <= MAX_OUTBOX_HOLD_MS) {
      pending.written = false;
      this.paced = true;
      this.holdOutbox(wait);
      return;
    }
    this.outbox.delete(pending.data.client_id);
    if (this.outbox.size === 0) this.paced = false;
    pending.reject(new ChatSphereError(data.code, data.detail, undefined, undefined, data.retry_after_ms));
    this.flushOutbox();
  }

  // --- outbox ---------------------------------------------------------------------------------

  /**
   * Writes what the outbox may send now, oldest first: every send not yet written, or while
   * paced only the oldest, once nothing written is awaiting its answer.
   */
  private flushOutbox(): void {
    if (this.current !== "open" || this.outboxTimer) return;
    for (const p of this.outbox.values()) {
      if (p.written) {
        if (this.paced) return;
        continue;
      }
      p.written = true;
      this.write({ type: "send_message", data: p.data });
      if (this.paced) return;
    }
  }

  /** Writes nothing for `ms` (longer if already held longer), then flushes. */
  private holdOutbox(ms: number): void {
    const until = Date.now() + ms;
    if (this.outboxTimer && until <= this.outboxHeldUntil) return;
    if (this.outboxTimer) clearTimeout(this.outboxTimer);
    this.outboxHeldUntil = until;
    this.outboxTimer = setTimeout(() => {
      this.outboxTimer = null;
      this.flushOutbox();
    }, ms);
  }

  private rejectOutbox(error: ChatSphereError): void {
    if (this.outboxTimer) clearTimeout(this.outboxTimer);
    this.outboxTimer = null;
    this.paced = false;
    for (const p of this.outbox.values()) p.reject(error);
    this.outbox.clear();
  }

  private chatOf(message: Message): ChatRef {
    return chatOf(message, this.me ?? "");
  }

  private onMessage(message: Message): void {
    const chat = this.chatOf(message);
    const key = chatKey(chat);
    const t = this.tracks.get(key);
    if (!t) {
      // A conversation new to this client (a first private message, a group it was added to):
      // followed from here.
      this.tracks.set(key, { chat, seq: message.seq, held: new Map() });
      this.emit("message", message, chat);
      return;
    }
    if (message.seq <= t.seq) return;
    if (message.seq === t.seq + 1) {
      t.seq = message.seq;
      this.emit("message", message, chat);
      this.release(t);
      return;
    }
    // A gap: hold the message until sync fills what is missing.
    t.held.set(message.seq, message);
    this.requestSync([key]);
  }

  /** Delivers held messages that now follow on. */
  private release(t: Track): void {
    for (const seq of [...t.held.keys()]) if (seq <= t.seq) t.held.delete(seq);
    let next = t.held.get(t.seq + 1);
    while (next) {
      t.held.delete(next.seq);
      t.seq = next.seq;
      this.emit("message", next, t.chat);
      next = t.held.get(t.seq + 1);
    }
  }

  private requestSync(keys: string[]): void {
    for (const k of keys) this.syncWanted.add(k);
    if (this.syncInFlight || this.current !== "open" || this.syncWanted.size === 0) return;
    const positions: SyncPosition[] = [];
    for (const key of this.syncWanted) {
      const t = this.tracks.get(key);
      this.syncWanted.delete(key);
      if (t) positions.push({ ...t.chat, seq: t.seq });
      if (positions.length === MAX_SYNC_POSITIONS) break;
    }
    if (positions.length === 0) return;
    this.syncInFlight = true;
    this.syncing = positions.map((p) => chatKey(p));
    this.write({ type: "sync", data: { positions } });
  }

  private onSynced(data: ServerEvents["synced"]): void {
    this.syncInFlight = false;
    this.syncing = [];
    for (const result of data.results) {
      const key = chatKey(result);
      const t = this.tracks.get(key);
      if (!t) continue;
      for (const m of result.messages) {
        if (m.seq > t.seq) t.held.set(m.seq, m);
      }
      this.release(t);
      if (result.has_more) {
        this.syncWanted.add(key);
      } else if (t.held.size > 0) {
        // The server has nothing more before the held messages: what is missing is gone for
        // good (never expected; no better than holding forever). Deliver on from the next one.
        t.seq = Math.min(...t.held.keys()) - 1;
        this.release(t);
      }
    }
    this.requestSync([]);
  }

  private flushReads(): void {
    if (this.readTimer) clearTimeout(this.readTimer);
    this.readTimer = null;
    if (this.current !== "open") return;
    let sent = 0;
    for (const [key, read] of this.reads) {
      if (sent === 8) break; // the server takes 10 a second per connection
      this.write({ type: "mark_read", data: read });
      this.reads.delete(key);
      sent += 1;
    }
    if (this.reads.size > 0) this.readTimer = setTimeout(() => this.flushReads(), 1000);
  }
}

function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

function isAuthError(e: unknown): boolean {
  return e instanceof ChatSphereError && (e.status === 401 || e.code === "unauthorized");
}
