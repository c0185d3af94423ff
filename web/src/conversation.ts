// The open conversation: its header, its messages as they come and go, reading and sending.
import { chatKey, unwrap, type ChatRef, type Message } from "@chatsphere/client";
import { cs, state } from "./session.js";
import { h, learnNames, nameOf, remember, showError, succeeded, time } from "./dom.js";
import { refreshConversation, renderConversations, toggleArchive, toggleMute } from "./list.js";
import { mentionsMe, messageItem } from "./messages.js";
import { showMembers, showPins } from "./dialogs.js";

export async function openConversation(chat: ChatRef & { name: string }): Promise<void> {
  state.open = chat;
  answering(null);
  state.messages = [];
  state.reads.clear();
  const page = unwrap(
    await cs.rest.GET("/chat/messages/{chat_type}/{chat_id}", { params: { path: { chat_type: chat.chat_type, chat_id: chat.chat_id } } }),
  );
  if (state.open !== chat) return;
  state.role = null;
  state.description = null;
  if (chat.chat_type === "room") {
    const room = unwrap(await cs.rest.GET("/chat/rooms/{id}", { params: { path: { id: chat.chat_id } } }));
    state.role = room.my_role ?? null;
    state.description = room.description ?? null;
  }
  await loadNames(chat, page.messages);
  state.messages = page.messages;
  state.hasOlder = page.has_more;
  state.socket?.track(chat, page.messages.at(-1)?.seq ?? 0);
  renderHeader();
  renderMessages(true);
  (document.querySelector("#composer") as HTMLFormElement).hidden = false;
  document.querySelector<HTMLInputElement>("#compose")?.focus();
  markRead();
  if (chat.chat_type === "private") {
    // Presence events only cover people the user already shared a chat with: ask afresh.
    const online = unwrap(await cs.rest.GET("/chat/online-users", { params: { query: { ids: chat.chat_id } } }));
    if (online.some((u) => u.id === chat.chat_id)) state.online.add(chat.chat_id);
    else state.online.delete(chat.chat_id);
    renderHeader();
  }
  if (chat.chat_type !== "room") {
    const reads = unwrap(await cs.rest.GET("/chat/reads/{chat_type}/{chat_id}", { params: { path: chat } }));
    for (const r of reads) if (r.user_id !== state.me?.id) state.reads.set(r.user_id, r.last_read_seq);
    renderSeen();
  }
  renderConversations();
}

/** Names for a conversation: a group's members (read receipts name them); elsewhere, the
 *  authors of the messages shown, not a room's every member. */
export async function loadNames(chat: ChatRef, messages: Message[]): Promise<void> {
  if (chat.chat_type === "group") {
    try {
      const group = unwrap(await cs.rest.GET("/chat/groups/{id}", { params: { path: { id: chat.chat_id } } }));
      remember(group.members);
      if (state.open === chat) state.role = group.owner_id === state.me?.id ? "owner" : "member";
    } catch {
      // Names fall back to short ids.
    }
  }
  await learnNames(messages.map((m) => m.from_user_id));
}

export function renderHeader(): void {
  const header = document.querySelector("#chat-header");
  if (!header || !state.open) return;
  const o = state.open;
  const presence = o.chat_type === "private" ? (state.online.has(o.chat_id) ? "online" : "offline") : "";
  const blocked = o.chat_type === "private" && state.blocked.has(o.chat_id);
  // Only a conversation the user is in has settings of theirs (not a room they only look at).
  const conv = state.conversations.find((c) => chatKey(c) === chatKey(o));
  header.replaceChildren(
    h("h2", { "data-testid": "chat-title" }, o.chat_type === "room" ? `#${o.name}` : o.name),
    presence && h("span", { class: `presence ${presence}`, "data-testid": "presence" }, presence),
    o.chat_type === "room" && state.description ? h("span", { class: "muted description", "data-testid": "description" }, state.description) : "",
    h("span", { class: "spacer" }),
    o.chat_type !== "private" && state.role === "owner" ? h("button", { class: "link", "data-testid": "rename", onclick: () => void rename() }, "Rename") : "",
    conv ? h("button", { class: "link", "data-testid": "archive", onclick: () => void toggleArchive(conv) }, conv.archived ? "Unarchive" : "Archive") : "",
    conv ? h("button", { class: "link", "data-testid": "mute", title: "Notifications while you are away", onclick: () => void toggleMute(conv) }, conv.notifications_muted ? "Unmute" : "Mute") : "",
    o.chat_type === "room" ? h("button", { class: "link", "data-testid": "members", onclick: () => void showMembers() }, "Members") : "",
    h("button", { class: "link", "data-testid": "pinned", onclick: () => void showPins() }, "Pinned"),
    o.chat_type === "private" ? h("button", { class: "link", "data-testid": "block", onclick: () => void toggleBlock(o.chat_id) }, blocked ? "Unblock" : "Block") : "",
  );
}

/** Renames the open room or group (its owner only); everyone in it sees `conversation_updated`. */
export async function rename(): Promise<void> {
  const chat = state.open;
  if (!chat || chat.chat_type === "private") return;
  const name = prompt("New name", chat.name)?.trim();
  if (!name || name === chat.name) return;
  const path = { id: chat.chat_id };
  succeeded(
    chat.chat_type === "room"
      ? await cs.rest.PATCH("/chat/rooms/{id}", { params: { path }, body: { name } })
      : await cs.rest.PATCH("/chat/groups/{id}", { params: { path }, body: { name } }),
  );
}

export function renderMessages(toBottom: boolean): void {
  const list = document.querySelector<HTMLOListElement>("#messages");
  if (!list) return;
  const fromBottom = list.scrollHeight - list.scrollTop;
  list.replaceChildren(...(state.hasOlder ? [h("li", { class: "older muted" }, "Scroll up for older messages")] : []), ...state.messages.map(messageItem));
  if (toBottom) list.scrollTop = list.scrollHeight;
  else list.scrollTop = list.scrollHeight - fromBottom;
  renderSeen();
}

export function replaceMessage(m: Message): void {
  const i = state.messages.findIndex((x) => x.id === m.id);
  if (i < 0) return;
  state.messages[i] = m;
  document.querySelector(`#messages li[data-id="${m.id}"]`)?.replaceWith(messageItem(m));
}

export async function onScroll(): Promise<void> {
  const list = document.querySelector<HTMLOListElement>("#messages")!;
  if (list.scrollTop > 40 || !state.hasOlder || state.loadingOlder || !state.open) return;
  state.loadingOlder = true;
  const chat = state.open;
  try {
    const first = state.messages[0]?.seq;
    const page = unwrap(
      await cs.rest.GET("/chat/messages/{chat_type}/{chat_id}", {
        params: { path: { chat_type: chat.chat_type, chat_id: chat.chat_id }, query: { before: first } },
      }),
    );
    if (state.open !== chat) return;
    await learnNames(page.messages.map((m) => m.from_user_id));
    if (state.open !== chat) return;
    state.messages = [...page.messages, ...state.messages];
    state.hasOlder = page.has_more;
    renderMessages(false);
  } catch (e) {
    showError(e);
  } finally {
    state.loadingOlder = false;
  }
}

export function renderTyping(): void {
  const el = document.querySelector("#typing");
  if (!el || !state.open) return;
  const now = Date.now();
  const prefix = `${chatKey(state.open)}|`;
  const who = [...state.typing].filter(([k, until]) => k.startsWith(prefix) && until > now).map(([k]) => nameOf(k.slice(prefix.length)));
  el.textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}

export function renderSeen(): void {
  const el = document.querySelector("#seen");
  if (!el || !state.open) return;
  const lastMine = [...state.messages].reverse().find((m) => m.from_user_id === state.me?.id);
  const seenBy = lastMine ? [...state.reads].filter(([, seq]) => seq >= lastMine.seq).map(([id]) => nameOf(id)) : [];
  el.textContent = seenBy.length ? `Seen by ${seenBy.join(", ")}` : "";
}

export function markRead(): void {
  const last = state.messages.at(-1);
  if (!state.open || !last || document.hidden) return;
  state.socket?.markRead(state.open, last.seq);
  const c = state.conversations.find((x) => chatKey(x) === chatKey(state.open!));
  if (c) {
    c.unread_count = 0;
    c.mention_count = 0;
    c.last_read_seq = Math.max(c.last_read_seq, last.seq);
  }
}

export function onMessage(m: Message, chat: ChatRef): void {
  const open = state.open && chatKey(state.open) === chatKey(chat);
  if (open) {
    state.messages.push(m);
    if (!cs.users.peek(m.from_user_id)) void learnNames([m.from_user_id]).then(() => replaceMessage(m));
    const list = document.querySelector<HTMLOListElement>("#messages")!;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    list.append(messageItem(m));
    if (atBottom || m.from_user_id === state.me?.id) list.scrollTop = list.scrollHeight;
    state.typing.delete(`${chatKey(chat)}|${m.from_user_id}`);
    renderTyping();
    renderSeen();
    markRead();
  }
  const c = state.conversations.find((x) => chatKey(x) === chatKey(chat));
  if (!c) {
    void refreshConversation(chat).catch(showError);
    return;
  }
  c.last_message = m;
  c.archived = false; // news brings an archived conversation back, as the server has it
  if (!open && m.from_user_id !== state.me?.id) {
    c.unread_count += 1;
    if (mentionsMe(m)) c.mention_count += 1;
  }
  state.conversations = [c, ...state.conversations.filter((x) => x !== c)];
  renderConversations();
}

export async function sendCurrent(): Promise<void> {
  const input = document.querySelector<HTMLInputElement>("#compose")!;
  const content = input.value.trim();
  const open = state.open;
  if (!content || !open || !state.socket) return;
  input.value = "";
  const replyTo = state.replyTo;
  answering(null);
  try {
    await state.socket.send(open, content, replyTo ? { reply_to_id: replyTo.id } : {});
    if (!state.conversations.some((c) => chatKey(c) === chatKey(open))) await refreshConversation(open);
  } catch (e) {
    showError(e);
  }
}

/** Makes the next send an answer to `m` (or to nothing), shown above the composer. */
export function answering(m: Message | null): void {
  state.replyTo = m;
  const bar = document.querySelector<HTMLDivElement>("#replying");
  if (!bar) return;
  bar.hidden = m === null;
  bar.replaceChildren(
    ...(m
      ? [
          h("span", {}, `Replying to ${nameOf(m.from_user_id)}: `, h("em", {}, snippet(m))),
          h("button", { class: "link", title: "Cancel the reply", "data-testid": "cancel-reply", onclick: () => answering(null) }, "×"),
        ]
      : []),
  );
  if (m) document.querySelector<HTMLInputElement>("#compose")?.focus();
}

/** A message in a line: its start, or what it holds when it has no text. */
export function snippet(m: Message): string {
  if (m.is_deleted) return "message deleted";
  const text = m.content || m.attachment?.filename || "";
  return text.length > 80 ? `${text.slice(0, 80)}…` : text;
}

/** Uploads the chosen file and sends it as a message. */
export async function attach(input: HTMLInputElement): Promise<void> {
  const file = input.files?.[0];
  input.value = "";
  // Sent where it was chosen, whatever is open once it is uploaded.
  const open = state.open;
  const socket = state.socket;
  if (!file || !open || !socket) return;
  try {
    const attachmentId = await cs.upload(file);
    await socket.send(open, "", { message_type: file.type.startsWith("image/") ? "image" : "file", attachment_id: attachmentId });
  } catch (e) {
    showError(e);
  }
}

/** A line in the open conversation that is not a message (someone joined, was muted…). */
export function note(text: string): void {
  const list = document.querySelector<HTMLOListElement>("#messages");
  if (!list) return;
  list.append(h("li", { class: "note muted", "data-testid": "note" }, text));
  list.scrollTop = list.scrollHeight;
}

export function membershipText(d: { user_id: string; action: string; by?: string; until?: string }): string {
  const who = nameOf(d.user_id);
  const by = d.by ? ` by ${d.by === state.me?.id ? "you" : nameOf(d.by)}` : "";
  const until = d.until ? ` until ${time(d.until)}` : "";
  const verb: Record<string, string> = {
    joined: "joined", left: "left", added: "was added", removed: "was removed", banned: "was banned",
    unbanned: "was unbanned", muted: "was muted", unmuted: "was unmuted", promoted: "became a moderator", demoted: "is no longer a moderator",
  };
  return `${who} ${verb[d.action] ?? d.action}${by}${until}`;
}

export async function toggleBlock(userId: string): Promise<void> {
  const params = { params: { path: { user_id: userId } } };
  const blocked = state.blocked.has(userId);
  if (!succeeded(blocked ? await cs.rest.DELETE("/chat/blocks/{user_id}", params) : await cs.rest.PUT("/chat/blocks/{user_id}", params))) return;
  if (blocked) state.blocked.delete(userId);
  else state.blocked.add(userId);
  renderHeader();
}
