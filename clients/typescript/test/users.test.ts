// The user directory against the real stack (see stack.ts for what it needs).
import { randomUUID } from "node:crypto";

import { beforeAll, describe, expect, it } from "vitest";

import { unwrap, type User } from "../src/index.js";
import { eventually, register, signIn, type TestUser } from "./stack.js";

let alice: TestUser;
let bob: TestUser;
let carol: TestUser;
beforeAll(async () => {
  [alice, bob, carol] = await Promise.all([register("alice"), register("bob"), register("carol")]);
});

/** A login whose `GET /auth/users?ids=` requests are counted, with the ids each asked. */
async function counting(user: TestUser) {
  const asked: string[][] = [];
  const cs = await signIn(user, {
    fetch: (input, init) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      if (url.pathname === "/auth/users" && url.searchParams.has("ids")) {
        asked.push(url.searchParams.get("ids")!.split(","));
      }
      return fetch(input, init);
    },
  });
  return { cs, asked };
}

describe("UserDirectory on the real stack", () => {
  it("names users by id, one request for the calls of one tick, none for what it knows", async () => {
    const { cs, asked } = await counting(alice);
    const unknown = randomUUID();
    const [first, second] = await Promise.all([
      cs.users.get([bob.id, carol.id]),
      cs.users.get([carol.id, unknown]),
    ]);
    expect(asked).toHaveLength(1);
    expect(new Set(asked[0])).toEqual(new Set([bob.id, carol.id, unknown]));
    expect(first.get(bob.id)?.username).toBe(bob.username);
    expect(first.get(carol.id)?.username).toBe(carol.username);
    expect(second.has(unknown)).toBe(false);
    expect(cs.users.peek(carol.id)?.username).toBe(carol.username);

    // Known users, and ids the server does not know, are not asked about again.
    const again = await cs.users.get([bob.id, unknown]);
    expect(again.get(bob.id)?.username).toBe(bob.username);
    expect(asked).toHaveLength(1);
  });

  it("asks again, after a reconnect, about users it knew, and says who changed", async () => {
    const dana = await register("dana");
    const { cs, asked } = await counting(bob);
    await cs.users.get([dana.id]);
    const updated: User[] = [];
    cs.users.on("updated", (u) => updated.push(u));
    const first = cs.connect();
    await eventually(() => first.state === "open");
    first.close();
    // Dana renames herself; nothing tells Bob (he has no socket then, and no chat with her).
    const name = `Dana ${randomUUID().slice(0, 8)}`;
    const danas = await signIn(dana);
    unwrap(await danas.rest.PATCH("/auth/me", { body: { display_name: name } }));
    expect(cs.users.peek(dana.id)?.display_name).not.toBe(name);
    const second = cs.connect();
    try {
      await eventually(() => second.state === "open");
      // Answered at once with what was known; asked again in the background.
      const now = await cs.users.get([dana.id]);
      expect(now.get(dana.id)?.display_name).not.toBe(name);
      await eventually(() => updated.some((u) => u.id === dana.id));
      expect(cs.users.peek(dana.id)?.display_name).toBe(name);
      expect(asked).toHaveLength(2);
      // Fresh again: not asked a third time.
      await cs.users.get([dana.id]);
      expect(asked).toHaveLength(2);
    } finally {
      second.close();
    }
  });

  it("asks 100 ids at a time", async () => {
    const { cs, asked } = await counting(bob);
    const ids = [alice.id, ...Array.from({ length: 249 }, () => randomUUID())];
    const found = await cs.users.get(ids);
    expect(asked.map((a) => a.length).sort((x, y) => x - y)).toEqual([50, 100, 100]);
    expect([...found.keys()]).toEqual([alice.id]);
  });
});
