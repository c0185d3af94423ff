// `unwrap` over the typed REST client against the real stack (see stack.ts for what it needs).
import { beforeAll, describe, expect, it } from "vitest";

import { ChatSphereError, unwrap } from "../src/index.js";
import { register, signIn, uniqueName, type TestUser } from "./stack.js";

let alice: TestUser;
let bob: TestUser;
beforeAll(async () => {
  [alice, bob] = await Promise.all([register("alice"), register("bob")]);
});

describe("unwrap", () => {
  it("gives the body of a 2xx, nothing for a 204, and throws the error of anything else", async () => {
    const cs = await signIn(alice);
    const room = unwrap(await cs.rest.POST("/chat/rooms", { body: { name: uniqueName("rest") } }));
    expect(room.my_role).toBe("owner");
    const chat = { chat_type: "room" as const, chat_id: room.id };
    const message = unwrap(
      await cs.rest.POST("/chat/messages/{chat_type}/{chat_id}", { params: { path: chat }, body: { content: "hi" } }),
    );

    // 204 No Content: a success with no body.
    const reaction = { params: { path: { id: message.id, emoji: "👍" } } };
    expect(unwrap(await cs.rest.PUT("/chat/messages/{id}/reactions/{emoji}", reaction))).toBeUndefined();
    const [stored] = unwrap(
      await cs.rest.GET("/chat/messages/{chat_type}/{chat_id}", { params: { path: chat } }),
    ).messages;
    expect(stored?.reactions).toEqual([{ emoji: "👍", count: 1, me: true }]);
    expect(unwrap(await cs.rest.DELETE("/chat/messages/{id}/reactions/{emoji}", reaction))).toBeUndefined();

    // A refusal throws its code, detail and status.
    const other = await signIn(bob);
    const refused = await other.rest.DELETE("/chat/messages/{id}", { params: { path: { id: message.id } } });
    let thrown: unknown;
    try {
      unwrap(refused);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(ChatSphereError);
    expect(thrown).toMatchObject({ status: 403 });
    expect((thrown as ChatSphereError).code).not.toMatch(/^http_/);
  });
});
