// The socket client against the real stack (see stack.ts for what it needs).
import { afterEach, beforeAll, describe, expect, it } from "vitest";

import {
  ChatSocket,
  ChatSphereError,
  unwrap,
  type ChatRef,
  type Message,
  type ServerEvents,
  type WebSocketConstructor,
  type WebSocketLike,
} from "../src/index.js";
import {
  baseUrl,
  eventually,
  Gateway,
  NodeWebSocket,
  register,
  signIn,
  sleep,
  wsBase,
  type TestUser,
} from "./stack.js";

let aliceUser: TestUser;
let bobUser: TestUser;
beforeAll(async () => {
  aliceUser = await register("alice");
  bobUser = await register("bob");
});

/** A fresh login of a test user, named like the users of the old tests. */
async function as(user: () => TestUser, options: Parameters<typeof signIn>[1] = {}) {
  const u = user();
  return { cs: await signIn(u, options), id: u.id, username: u.username };
}
const aliceOf = () => aliceUser;
const bobOf = () => bobUser;

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

/** Records the `message` events of a socket, per conversation. */
function record(socket: ChatSocket): Message[] {
  const got: Message[] = [];
  socket.on("message", (m) => got.push(m));
  return got;
}

async function ready(socket: ChatSocket): Promise<void> {
  await eventually(() => socket.state === "open");
}

/**
 * A real WebSocket whose frames go out through `onSend`, which may rewrite them or send
 * others first.
 */
function intercepting(onSend: (data: string, send: (data: string) => void) => void): WebSocketConstructor {
  return class implements WebSocketLike {
    private readonly inner: WebSocketLike;
    onopen: WebSocketLike["onopen"] = null;
    onmessage: WebSocketLike["onmessage"] = null;
    onclose: WebSocketLike["onclose"] = null;
    onerror: WebSocketLike["onerror"] = null;
    constructor(url: string, protocols?: string | string[]) {
      this.inner = new NodeWebSocket(url, protocols);
      this.inner.onopen = (ev) => this.onopen?.(ev);
      this.inner.onclose = (ev) => this.onclose?.(ev);
      this.inner.onerror = (ev) => this.onerror?.(ev);
      this.inner.onmessage = (ev) => this.onmessage?.(ev);
    }
    get binaryType(): string {
      return this.inner.binaryType;
    }
    set binaryType(kind: string) {
      this.inner.binaryType = kind;
    }
    get readyState(): number {
      return this.inner.readyState;
    }
    get protocol(): string {
      return this.inner.protocol;
    }
    send(data: string | ArrayBufferLike | Uint8Array): void {
      if (typeof data === "string") onSend(data, (d) => this.inner.send(d));
      else this.inner.send(data);
    }
    close(code?: number, reason?: string): void {
      this.inner.close(code, reason);
    }
  };
}

const isSync = (data: string) => JSON.parse(data).type === "sync";

/**
 * A real WebSocket whose first `sync` goes out malformed, so the gateway answers it with an
 * `error` frame and nothing else, as it does when chat-service cannot answer a sync (down, or
 * shedding load: `unavailable`).
 */
function firstSyncFails(): WebSocketConstructor {
  let failed = false;
  return intercepting((data, send) => {
    if (!failed && isSync(data)) {
      failed = true;
      return send(JSON.stringify({ type: "sync", data: { positions: "none" } }));
    }
    send(data);
  });
}

function expectGapless(messages: Message[], count: number): void {
  expect(messages.map((m) => m.seq)).toEqual(Array.from({ length: count }, (_, i) => i + 1));
}

describe("ChatSocket on the real stack", () => {
  it("loses and doubles nothing when its gateway is killed mid-conversation", async () => {
    const gateway = await Gateway.start();
    cleanup.push(() => gateway.kill());
    let killed = false;
    // Alice (MessagePack) is on a gateway of the test's own until it dies, then comes back
    // through the public entry; Bob (JSON) is there all along.
    const alice = await as(aliceOf, { encoding: "msgpack", wsUrl: () => (killed ? wsBase : gateway.ws) });
    const bob = await as(bobOf);
    const room = unwrap(await alice.cs.rest.POST("/chat/rooms", { body: { name: `sdk-${crypto.randomUUID().slice(0, 8)}` } }));
    unwrap(await bob.cs.rest.POST("/chat/rooms/{id}/join", { params: { path: { id: room.id } } }));
    const chat: ChatRef = { chat_type: "room", chat_id: room.id };

    const a = alice.cs.connect({ positions: [{ ...chat, seq: 0 }] });
    const b = bob.cs.connect({ positions: [{ ...chat, seq: 0 }] });
    cleanup.push(() => a.close(), () => b.close());
    const gotA = record(a);
    const gotB = record(b);
    const states: string[] = [];
    a.on("state", (s) => states.push(s));
    await ready(a);
    await ready(b);

    const total = 60;
    const sends: Array<Promise<Message>> = [];
    for (let i = 0; i < total; i++) {
      const from = i % 2 === 0 ? a : b;
      sends.push(from.send(chat, `message ${i}`));
      if (i === 24) {
        killed = true;
        await gateway.kill();
      }
      await sleep(30);
    }
    const acked = await Promise.all(sends);
    expect(new Set(acked.map((m) => m.id)).size).toBe(total);

    await eventually(() => gotA.length >= total && gotB.length >= total, 30_000);
    await sleep(300); // anything doubled would arrive by now
    expectGapless(gotA, total);
    expectGapless(gotB, total);
    expect(states).toContain("reconnecting");
    expect(a.pending).toEqual([]);

    // The server stored each send once: history holds exactly the 60, each client_id once.
    const history = unwrap(
      await bob.cs.rest.GET("/chat/messages/{chat_type}/{chat_id}", {
        params: { path: { chat_type: "room", chat_id: room.id }, query: { limit: 100 } },
      }),
    );
    expect(history.messages.map((m) => m.content).sort()).toEqual(
      Array.from({ length: total }, (_, i) => `message ${i}`).sort(),
    );
    expect(new Set(history.messages.map((m) => m.client_id)).size).toBe(total);
    // Every message reached Alice in the order it was stored.
    expect(gotA.map((m) => m.id)).toEqual(history.messages.map((m) => m.id));
  });

  it("catches up by sync what was sent while it was away", async () => {
    const alice = await as(aliceOf);
    const bob = await as(bobOf);
    const room = unwrap(await alice.cs.rest.POST("/chat/rooms", { body: { name: `sdk-${crypto.randomUUID().slice(0, 8)}` } }));
    unwrap(await bob.cs.rest.POST("/chat/rooms/{id}/join", { params: { path: { id: room.id } } }));
    const chat: ChatRef = { chat_type: "room", chat_id: room.id };
    const post = (content: string) =>
      bob.cs.rest.POST("/chat/messages/{chat_type}/{chat_id}", {
        params: { path: { chat_type: "room", chat_id: room.id } },
        body: { content },
      });
    for (const c of ["one", "two", "three"]) unwrap(await post(c));

    // Alice saw up to seq 1 before (say, in an earlier page load) and comes back.
    const a = alice.cs.connect({ positions: [{ ...chat, seq: 1 }] });
    cleanup.push(() => a.close());
    const got = record(a);
    await eventually(() => got.length === 2);
    unwrap(await post("four"));
    await eventually(() => got.length === 3);
    expect(got.map((m) => [m.seq, m.content])).toEqual([
      [2, "two"],
      [3, "three"],
      [4, "four"],
    ]);
    expect(a.positions()).toEqual([{ ...chat, seq: 4 }]);
  });

  it("asks again for a sync the server could not answer", async () => {
    const alice = await as(aliceOf, { WebSocket: firstSyncFails() });
    const bob = await as(bobOf);
    const room = unwrap(await alice.cs.rest.POST("/chat/rooms", { body: { name: `sdk-${crypto.randomUUID().slice(0, 8)}` } }));
    unwrap(await bob.cs.rest.POST("/chat/rooms/{id}/join", { params: { path: { id: room.id } } }));
    const chat: ChatRef = { chat_type: "room", chat_id: room.id };
    for (const content of ["one", "two", "three"]) {
      unwrap(
        await bob.cs.rest.POST("/chat/messages/{chat_type}/{chat_id}", {
          params: { path: { chat_type: "room", chat_id: room.id } },
          body: { content },
        }),
      );
    }
    // Its first sync is answered with an error: the positions are asked for again, and the
    // messages come with the answer to that.
    const a = alice.cs.connect({ positions: [{ ...chat, seq: 1 }] });
    cleanup.push(() => a.close());
    const errors: string[] = [];
    a.on("error", (e) => errors.push(e.code));
    const got = record(a);
    await eventually(() => got.length === 2);
    expect(errors).toEqual(["invalid_payload"]);
    expect(got.map((m) => [m.seq, m.content])).toEqual([
      [2, "two"],
      [3, "three"],
    ]);
  });

  it("does not take another frame's error during a sync for the sync's", async () => {
    const bob = await as(bobOf);
    const room = unwrap(await bob.cs.rest.POST("/chat/rooms", { body: { name: `sdk-${crypto.randomUUID().slice(0, 8)}` } }));
    const chat: ChatRef = { chat_type: "room", chat_id: room.id };
    for (const content of ["one", "two"]) {
      unwrap(
        await bob.cs.rest.POST("/chat/messages/{chat_type}/{chat_id}", {
          params: { path: { chat_type: "room", chat_id: room.id } },
          body: { content },
        }),
      );
    }
    // Just before its sync, a typing frame the gateway refuses (no such room): that error
    // comes while the sync is under way and names typing, so the sync is asked for once.
    let syncs = 0;
    const WebSocket = intercepting((data, send) => {
      if (isSync(data)) {
        syncs += 1;
        if (syncs === 1) {
          send(JSON.stringify({ type: "typing", data: { chat_type: "room", chat_id: crypto.randomUUID() } }));
        }
      }
      send(data);
    });
    const alice = await as(aliceOf, { WebSocket });
    unwrap(await alice.cs.rest.POST("/chat/rooms/{id}/join", { params: { path: { id: room.id } } }));
    const a = alice.cs.connect({ positions: [{ ...chat, seq: 1 }] });
    cleanup.push(() => a.close());
    const errors: string[] = [];
    a.on("error", (e) => errors.push(e.code));
    const got = record(a);
    await eventually(() => got.length >= 1 && errors.length === 1);
    // Past the SDK's retry delay (1 s): a second sync would have gone out by now.
    await sleep(1_500);
    expect(errors).toEqual(["forbidden"]);
    expect(syncs).toBe(1);
    expect(got[0]?.seq).toBe(2);
  });

  it("answers token_expiring with reauth and stays connected", async () => {
    // A gateway that announces expiry almost at once (tokens live 30 minutes by default).
    const gateway = await Gateway.start({ REAUTH_NOTICE_SECONDS: "1799" });
    cleanup.push(() => gateway.kill());
    const alice = await as(aliceOf, { wsUrl: gateway.ws });
    const a = alice.cs.connect();
    cleanup.push(() => a.close());
    const reauthed: string[] = [];
    const closes: number[] = [];
    a.on("reauthed", (d) => reauthed.push(d.expires_at));
    a.on("close", (code) => closes.push(code));
    await eventually(() => reauthed.length >= 1, 30_000);
    expect(Date.parse(reauthed[0] ?? "")).toBeGreaterThan(Date.now() + 60_000);
    expect(a.state).toBe("open");
    expect(closes).toEqual([]);
  });

  it("stops, rejecting its outbox, when the login is revoked (4001, refresh refused)", async () => {
    const alice = await as(aliceOf);
    const a = alice.cs.connect();
    const closes: number[] = [];
    let stopped: Error | null = null;
    a.on("close", (code) => closes.push(code));
    a.on("stopped", (e) => (stopped = e));
    await ready(a);
    await alice.cs.logout();
    await eventually(() => stopped !== null, 15_000);
    expect(closes).toContain(4001);
    expect(a.state).toBe("closed");
    await expect(a.send({ chat_type: "room", chat_id: crypto.randomUUID() }, "late")).rejects.toThrow();
  });

  it("keeps its sends in order past the send rate, and resends the refused ones one at a time", async () => {
    let written = 0;
    const WebSocket = intercepting((data, send) => {
      if (JSON.parse(data).type === "send_message") written += 1;
      send(data);
    });
    const alice = await as(aliceOf, { WebSocket });
    const room = unwrap(await alice.cs.rest.POST("/chat/rooms", { body: { name: `sdk-${crypto.randomUUID().slice(0, 8)}` } }));
    const chat: ChatRef = { chat_type: "room", chat_id: room.id };
    const a = alice.cs.connect();
    cleanup.push(() => a.close());
    await ready(a);
    // The stack's default rate is 20 a second, bursts of 40: some of the first 50 are refused
    // `rate_limited`, and the five sent a little later must not overtake them.
    const sends: Array<Promise<Message>> = [];
    for (let i = 0; i < 50; i++) sends.push(a.send(chat, `m${i}`));
    await sleep(200);
    for (let i = 50; i < 55; i++) sends.push(a.send(chat, `m${i}`));
    const stored = await Promise.all(sends);
    expect(stored.map((m) => m.content)).toEqual(Array.from({ length: 55 }, (_, i) => `m${i}`));
    const seqs = stored.map((m) => m.seq);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    expect(new Set(seqs).size).toBe(55);
    // Some were refused and written again, each a few times at most.
    expect(written).toBeGreaterThan(55);
    expect(written).toBeLessThan(55 * 2);
    expect(a.pending).toEqual([]);
  });

  it("rejects a send the server refuses, with its code, and keeps the connection", async () => {
    const alice = await as(aliceOf);
    const a = alice.cs.connect();
    cleanup.push(() => a.close());
    await ready(a);
    // Not a member of a room that does not exist.
    await expect(a.send({ chat_type: "room", chat_id: crypto.randomUUID() }, "hello")).rejects.toMatchObject({
      code: expect.stringMatching(/forbidden|not_found|send_failed/),
    });
    expect(a.state).toBe("open");
    expect(a.pending).toEqual([]);
  });

  it("rejects a send told to wait past what it holds its outbox for, and sends the rest", async () => {
    // The stack's PRIVATE_CHATS_PER_HOUR (scripts/e2e lowers it): one first message past it is
    // refused `rate_limited` with the hour's remaining time, longer than the outbox waits.
    const quota = Number(process.env.PRIVATE_CHATS_PER_HOUR ?? "100");
    const starter = await signIn(await register("starter"));
    const peers = await Promise.all(Array.from({ length: quota + 1 }, (_, i) => register(`peer${i}`)));
    const s = starter.connect();
    cleanup.push(() => s.close());
    await ready(s);
    const to = (p: TestUser): ChatRef => ({ chat_type: "private", chat_id: p.id });
    for (const p of peers.slice(0, quota)) await s.send(to(p), "hello");
    const refusedAt = Date.now();
    const late = s.send(to(peers[quota]!), "one too many");
    const after = s.send(to(peers[0]!), "still talking");
    const error = await late.then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ChatSphereError);
    const refused = error as ChatSphereError;
    expect(refused.code).toBe("rate_limited");
    expect(refused.retryAfterMs).toBeGreaterThan(30_000);
    expect(refused.retryAfterMs).toBeLessThanOrEqual(3_600_000);
    expect(Date.now() - refusedAt).toBeLessThan(10_000);
    expect((await after).content).toBe("still talking");
    expect(s.pending).toEqual([]);
  });

  it("hears the settings the user changes on another device", async () => {
    const laptop = await as(aliceOf);
    const phone = await as(aliceOf);
    const room = unwrap(await phone.cs.rest.POST("/chat/rooms", { body: { name: `sdk-${crypto.randomUUID().slice(0, 8)}` } }));
    const a = laptop.cs.connect();
    cleanup.push(() => a.close());
    const heard: Array<ServerEvents["conversation_settings"]> = [];
    a.on("conversation_settings", (d) => heard.push(d));
    await ready(a);
    const path = { chat_type: "room" as const, chat_id: room.id };
    const until = new Date(Date.now() + 3_600_000).toISOString();
    const muted = await phone.cs.rest.PUT("/chat/conversations/{chat_type}/{chat_id}/notifications", {
      params: { path },
      body: { muted: true, until },
    });
    expect(muted.response.status).toBe(204);
    await eventually(() => heard.length === 1);
    const archived = await phone.cs.rest.PUT("/chat/conversations/{chat_type}/{chat_id}/archive", { params: { path } });
    expect(archived.response.status).toBe(204);
    await eventually(() => heard.length === 2);
    expect(heard.map((d) => [d.notifications_muted, d.archived])).toEqual([
      [true, false],
      [true, true],
    ]);
    expect(heard[0]).toMatchObject({ chat_type: "room", chat_id: room.id });
    expect(Date.parse(heard[1]?.notifications_muted_until ?? "")).toBe(Date.parse(until));
  });

  it("hears a peer's new display name and keeps it in its user directory", async () => {
    const alice = await as(aliceOf);
    const bob = await as(bobOf);
    await bob.cs.rest.POST("/chat/messages/{chat_type}/{chat_id}", {
      params: { path: { chat_type: "private", chat_id: alice.id } },
      body: { content: "hi" },
    });
    await bob.cs.users.get([alice.id]);
    const b = bob.cs.connect();
    cleanup.push(() => b.close());
    const heard: Array<ServerEvents["user_updated"]> = [];
    b.on("user_updated", (u) => heard.push(u));
    await ready(b);
    const name = `Alice ${crypto.randomUUID().slice(0, 8)}`;
    unwrap(await alice.cs.rest.PATCH("/auth/me", { body: { display_name: name } }));
    await eventually(() => heard.some((u) => u.id === alice.id));
    expect(heard.find((u) => u.id === alice.id)).toMatchObject({ username: alice.username, display_name: name });
    expect(bob.cs.users.peek(alice.id)?.display_name).toBe(name);
  });
});

describe("the documents", () => {
  it("serves an AsyncAPI document naming every frame the client handles", async () => {
    const res = await fetch(`${baseUrl}/asyncapi.json`);
    expect(res.ok).toBe(true);
    const doc = (await res.json()) as { asyncapi: string; components: { messages: Record<string, unknown> } };
    expect(doc.asyncapi).toMatch(/^3\./);
    for (const t of ["send_message", "typing", "mark_read", "sync", "reauth", "ping"]) {
      expect(doc.components.messages).toHaveProperty(`client_${t}`);
    }
    for (const t of ["ready", "ack", "error", "message", "synced", "token_expiring", "reauthed", "reaction", "pin", "conversation_updated", "conversation_settings", "user_updated"]) {
      expect(doc.components.messages).toHaveProperty(`server_${t}`);
    }
  });
});
