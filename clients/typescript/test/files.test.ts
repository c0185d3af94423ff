// Uploads through the client against the real stack (see stack.ts for what it needs).
import { beforeAll, describe, expect, it } from "vitest";

import { ChatSphereError, unwrap, type ChatSphere } from "../src/index.js";
import { register, signIn, type TestUser } from "./stack.js";

let alice: TestUser;
let bob: TestUser;
beforeAll(async () => {
  [alice, bob] = await Promise.all([register("alice"), register("bob")]);
});

/** The bytes behind an attachment's download, as a member fetches them. */
async function downloaded(cs: ChatSphere, id: string): Promise<string> {
  const token = await cs.accessToken();
  const base = process.env.CHATSPHERE_URL ?? "http://127.0.0.1:8000";
  const r = await fetch(`${base}/chat/attachments/${id}`, { headers: { authorization: `Bearer ${token}` } });
  expect(r.status).toBe(200);
  return r.text();
}

describe("ChatSphere.upload on the real stack", () => {
  it("declares the file, sends its bytes where the server says, and the upload becomes an attachment", async () => {
    const cs = await signIn(alice);
    const text = "minutes of the meeting\n";
    const id = await cs.upload(new Blob([text], { type: "text/plain" }), { filename: "minutes.txt" });
    const sent = unwrap(
      await cs.rest.POST("/chat/messages/{chat_type}/{chat_id}", {
        params: { path: { chat_type: "private", chat_id: bob.id } },
        body: { message_type: "file", attachment_id: id, content: "for tomorrow" },
      }),
    );
    expect(sent.attachment).toMatchObject({ id, filename: "minutes.txt", content_type: "text/plain", size: text.length });
    expect(await downloaded(await signIn(bob), id)).toBe(text);
  });

  it("a File's own name and type are used", async () => {
    const cs = await signIn(alice);
    const file = new File(["a,b\n1,2\n"], "table.txt", { type: "text/plain" });
    const id = await cs.upload(file);
    const sent = unwrap(
      await cs.rest.POST("/chat/messages/{chat_type}/{chat_id}", {
        params: { path: { chat_type: "private", chat_id: bob.id } },
        body: { message_type: "file", attachment_id: id },
      }),
    );
    expect(sent.attachment?.filename).toBe("table.txt");
  });

  it("a refused declaration rejects with the field named", async () => {
    const cs = await signIn(alice);
    const error = await cs
      .upload(new Blob(["MZ"], { type: "application/x-msdownload" }), { filename: "setup.exe" })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ChatSphereError);
    expect((error as ChatSphereError).status).toBe(422);
    expect((error as ChatSphereError).fields?.content_type).toBeTruthy();
  });
});
