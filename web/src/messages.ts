// One message on screen and what the user can do with it.
import { ChatSphereError, unwrap, type Message } from "@chatsphere/client";
import { cs, state } from "./session.js";
import { h, nameOf, showError, succeeded, time } from "./dom.js";
import { answering, replaceMessage, snippet } from "./conversation.js";
import { avatar, thumbnail } from "./files.js";

export function messageItem(m: Message): HTMLLIElement {
  const mine = m.from_user_id === state.me?.id;
  const classes = [mine ? "mine" : "", !mine && mentionsMe(m) ? "mentions-me" : ""].filter(Boolean).join(" ");
  const item = h(
    "li",
    { class: classes, "data-seq": String(m.seq), "data-id": m.id },
    h("div", { class: "meta" }, avatar(m.from_user_id), " ", h("strong", {}, nameOf(m.from_user_id)), " ", h("time", {}, time(m.created_at)), m.is_edited && !m.is_deleted ? h("em", {}, " (edited)") : null),
    m.reply_to_id && !m.is_deleted ? quote(m.reply_to_id) : null,
    m.content || m.is_deleted || !m.attachment ? h("div", { class: m.is_deleted ? "content deleted" : "content" }, m.is_deleted ? "message deleted" : m.content) : null,
  );
  if (m.attachment && !m.is_deleted) {
    const a = m.attachment;
    if (a.content_type.startsWith("image/")) item.append(thumbnail(a.id, a.filename, () => void download(a.id, a.filename)));
    item.append(h("div", {}, h("button", { class: "file", "data-testid": "file", onclick: () => void download(a.id, a.filename) }, `${a.filename} (${Math.ceil(a.size / 1024)} KiB)`)));
  }
  if (!m.is_deleted) {
    const reactions = h("div", { class: "reactions" });
    for (const r of m.reactions ?? []) {
      reactions.append(h("button", { class: r.me ? "reaction me" : "reaction", onclick: () => void react(m, r.emoji, !r.me) }, `${r.emoji} ${r.count}`));
    }
    if (!(m.reactions ?? []).some((r) => r.emoji === "👍")) {
      reactions.append(h("button", { class: "reaction add", title: "React with 👍", onclick: () => void react(m, "👍", true) }, "+1"));
    }
    item.append(reactions);
    if (mine) {
      item.append(
        h(
          "div",
          { class: "tools" },
          h("button", { class: "link", "data-testid": "edit", onclick: () => void edit(m) }, "Edit"),
          h("button", { class: "link", "data-testid": "delete", onclick: () => void remove(m) }, "Delete"),
        ),
      );
    }
    item.append(
      h(
        "div",
        { class: "tools" },
        h("button", { class: "link", "data-testid": "reply", onclick: () => answering(m) }, "Reply"),
        h("button", { class: "link", "data-testid": "pin", onclick: () => void pin(m) }, "Pin"),
      ),
    );
  }
  return item;
}

export async function edit(m: Message): Promise<void> {
  const content = prompt("Edit message", m.content)?.trim();
  if (!content || content === m.content) return;
  try {
    replaceMessage(unwrap(await cs.rest.PATCH("/chat/messages/{id}", { params: { path: { id: m.id } }, body: { content } })));
  } catch (e) {
    showError(e);
  }
}

export async function remove(m: Message): Promise<void> {
  if (!confirm("Delete this message?")) return;
  succeeded(await cs.rest.DELETE("/chat/messages/{id}", { params: { path: { id: m.id } } }));
}

export async function react(m: Message, emoji: string, add: boolean): Promise<void> {
  const params = { params: { path: { id: m.id, emoji } } };
  succeeded(
    add
      ? await cs.rest.PUT("/chat/messages/{id}/reactions/{emoji}", params)
      : await cs.rest.DELETE("/chat/messages/{id}/reactions/{emoji}", params),
  );
}

export async function pin(m: Message): Promise<void> {
  succeeded(await cs.rest.PUT("/chat/messages/{id}/pin", { params: { path: { id: m.id } } }));
}

export async function download(id: string, filename: string): Promise<void> {
  const { data, error } = await cs.rest.GET("/chat/attachments/{id}", { params: { path: { id } }, parseAs: "blob" });
  if (error || !(data instanceof Blob)) return showError(new ChatSphereError("not_found", "the file is not available"));
  const url = URL.createObjectURL(data);
  const a = h("a", { href: url, download: filename });
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** The message a reply answers, as a line above it: who wrote what (when it is on screen),
 *  and a click takes the user there. */
function quote(id: string): HTMLElement {
  const original = state.messages.find((x) => x.id === id);
  const text = original ? `${nameOf(original.from_user_id)}: ${snippet(original)}` : "an earlier message";
  const jump = () => document.querySelector(`#messages li[data-id="${id}"]`)?.scrollIntoView({ block: "center" });
  return h("button", { class: "quote link", "data-testid": "quote", onclick: jump }, `↪ ${text}`);
}

/** Whether `m` names the user (`@username`, or `@room` / `@group`). */
export function mentionsMe(m: Message): boolean {
  return m.mentions_all === true || (state.me !== null && (m.mentions ?? []).includes(state.me.id));
}
