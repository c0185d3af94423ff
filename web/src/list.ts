// The conversation list, and what starts or changes a conversation from it.
import { chatKey, unwrap, type ChatRef, type User } from "@chatsphere/client";
import { type Conversation, cs, state } from "./session.js";
import { h, nameOf, remember, showError, succeeded } from "./dom.js";
import { openConversation, renderHeader, snippet } from "./conversation.js";

export async function refreshConversations(): Promise<void> {
  state.conversations = unwrap(await cs.rest.GET("/chat/conversations"));
  for (const c of state.conversations) state.socket?.track(c, c.last_message?.seq ?? 0);
  renderConversations();
  // The open conversation may have just become one of the user's (a first private message, a
  // room joined): its header gains the controls of their own conversations.
  renderHeader();
}

/**
 * Reads one conversation of the user's into the list, as it now stands (one that appeared — a
 * first private message, a room joined, a group the user was added to — or changed); one the user
 * is no longer in leaves the list. Cheaper than reading the whole list, which is rated.
 */
export async function refreshConversation(chat: ChatRef): Promise<void> {
  const path = { chat_type: chat.chat_type, chat_id: chat.chat_id };
  const result = await cs.rest.GET("/chat/conversations/{chat_type}/{chat_id}", { params: { path } });
  const others = state.conversations.filter((c) => chatKey(c) !== chatKey(chat));
  if (result.response.status === 403 || result.response.status === 404) {
    state.conversations = others;
  } else {
    const c = unwrap(result);
    state.socket?.track(c, c.last_message?.seq ?? 0);
    // Its place in the list: most recent activity first.
    const at = others.findIndex((x) => Date.parse(x.updated_at) < Date.parse(c.updated_at));
    state.conversations = at < 0 ? [...others, c] : [...others.slice(0, at), c, ...others.slice(at)];
  }
  renderConversations();
  renderHeader();
}

export function renderConversations(): void {
  const list = document.querySelector("#conversations");
  if (!list) return;
  const archived = state.conversations.filter((c) => c.archived);
  const shown = state.showArchived ? state.conversations : state.conversations.filter((c) => !c.archived);
  list.replaceChildren(
    ...shown.map((c) => {
      const open = state.open && chatKey(state.open) === chatKey(c);
      const online = c.chat_type === "private" && state.online.has(c.chat_id);
      return h(
        "li",
        { class: open ? "open" : "", "data-chat": chatKey(c) },
        h(
          "button",
          { title: preview(c), onclick: () => void openConversation({ chat_type: c.chat_type, chat_id: c.chat_id, name: c.name }) },
          h("span", { class: `kind ${c.chat_type}` }, c.chat_type === "room" ? "#" : c.chat_type === "group" ? "◆" : online ? "●" : "○"),
          h("span", { class: "name" }, c.name, c.last_message ? h("small", { class: "preview", "data-testid": "preview" }, preview(c)) : null),
          c.notifications_muted && h("span", { class: "muted", title: "Notifications muted", "data-testid": "muted" }, "🔕"),
          c.mention_count > 0 && h("span", { class: "badge mention", title: "You were mentioned", "data-testid": "mentioned" }, "@"),
          c.unread_count > 0 && h("span", { class: "badge", "data-testid": "unread" }, String(c.unread_count)),
        ),
      );
    }),
    archived.length > 0
      ? h(
          "li",
          { class: "archived-toggle" },
          h(
            "button",
            { "data-testid": "show-archived", onclick: () => ((state.showArchived = !state.showArchived), renderConversations()) },
            h("span", { class: "name muted" }, state.showArchived ? "Hide archived" : `Archived (${archived.length})`),
          ),
        )
      : "",
  );
}

/** The conversation's last message in a line, under its name and as its tooltip. */
function preview(c: Conversation): string {
  const m = c.last_message;
  if (!m) return c.name;
  const who = m.from_user_id === state.me?.id ? "You" : nameOf(m.from_user_id);
  return `${who}: ${snippet(m)}`;
}

export async function newRoom(): Promise<void> {
  const name = prompt("Room name")?.trim();
  if (!name) return;
  try {
    const room = unwrap(await cs.rest.POST("/chat/rooms", { body: { name } }));
    await refreshConversation({ chat_type: "room", chat_id: room.id });
    await openConversation({ chat_type: "room", chat_id: room.id, name: room.name });
  } catch (e) {
    showError(e);
  }
}

export async function findUser(username: string): Promise<User | null> {
  const found = unwrap(await cs.rest.GET("/auth/users", { params: { query: { q: username, limit: 10 } } }));
  remember(found);
  return found.find((u) => u.username.toLowerCase() === username.toLowerCase()) ?? null;
}

export async function newGroup(): Promise<void> {
  const name = prompt("Group name")?.trim();
  if (!name) return;
  const names = (prompt("Members (usernames, comma-separated)") ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const members = (await Promise.all(names.map(findUser))).filter((u): u is User => u !== null);
    const group = unwrap(await cs.rest.POST("/chat/groups", { body: { name, member_ids: members.map((u) => u.id) } }));
    await refreshConversation({ chat_type: "group", chat_id: group.id });
    await openConversation({ chat_type: "group", chat_id: group.id, name: group.name });
  } catch (e) {
    showError(e);
  }
}

export async function newPrivate(): Promise<void> {
  const username = prompt("Chat with (username)")?.trim();
  if (!username) return;
  try {
    const user = await findUser(username);
    if (!user) return showError(`no user named ${username}`);
    await openConversation({ chat_type: "private", chat_id: user.id, name: user.display_name || user.username });
  } catch (e) {
    showError(e);
  }
}

/** Archives one of the user's conversations (it comes back with its next message), or not. */
export async function toggleArchive(c: Conversation): Promise<void> {
  const params = { params: { path: { chat_type: c.chat_type, chat_id: c.chat_id } } };
  const path = "/chat/conversations/{chat_type}/{chat_id}/archive";
  // Set, not toggled, once answered: the change's `conversation_settings` event may have set
  // it already.
  const archive = !c.archived;
  if (!succeeded(archive ? await cs.rest.PUT(path, params) : await cs.rest.DELETE(path, params))) return;
  c.archived = archive;
  renderHeader();
  renderConversations();
}

/** Mutes or unmutes the notifications (pushes while away) of one of the user's conversations. */
export async function toggleMute(c: Conversation): Promise<void> {
  const muted = !c.notifications_muted;
  const answer = await cs.rest.PUT("/chat/conversations/{chat_type}/{chat_id}/notifications", {
    params: { path: { chat_type: c.chat_type, chat_id: c.chat_id } },
    body: { muted },
  });
  if (!succeeded(answer)) return;
  c.notifications_muted = muted;
  c.notifications_muted_until = null;
  renderHeader();
  renderConversations();
}
