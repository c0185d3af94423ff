// The ChatSphere browser app: plain TypeScript and the DOM on top of the SDK. One module per
// concern would be the next step once it grows; today the whole app reads top to bottom: state,
// helpers, the login screen, the conversation list, the open conversation, live events.
import {
  ChatSphere,
  ChatSphereError,
  chatKey,
  chatOf,
  unwrap,
  type ChatRef,
  type ChatSocket,
  type components,
  type Message,
  type TokenPair,
  type User,
} from "@chatsphere/client";

import "./style.css";

type Conversation = components["schemas"]["ConversationSummary"];
type Room = components["schemas"]["Room"];

const TOKENS = "chatsphere.tokens";
const cs = new ChatSphere({
  baseUrl: location.origin,
  tokens: {
    load: () => JSON.parse(localStorage.getItem(TOKENS) ?? "null") as TokenPair | null,
    save: (t) => (t ? localStorage.setItem(TOKENS, JSON.stringify(t)) : localStorage.removeItem(TOKENS)),
  },
});

const state = {
  me: null as User | null,
  socket: null as ChatSocket | null,
  conversations: [] as Conversation[],
  open: null as (ChatRef & { name: string }) | null,
  /** The caller's role in the open room (owner, moderator, member) or group (owner, member). */
  role: null as string | null,
  /** The open room's description, if it has one. */
  description: null as string | null,
  messages: [] as Message[],
  hasOlder: false,
  loadingOlder: false,
  online: new Set<string>(),
  typing: new Map<string, number>(),
  reads: new Map<string, number>(),
  blocked: new Set<string>(),
  /** Whether the list shows the archived conversations. */
  showArchived: false,
};

// --- helpers ----------------------------------------------------------------------------------

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Record<string, string | boolean | ((e: Event) => void)> = {},
  ...children: Array<Node | string | null | false>
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (typeof v === "boolean") {
      if (v) el.setAttribute(k, "");
    } else el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== false) el.append(c);
  return el;
}

const app = document.querySelector<HTMLDivElement>("#app")!;

function nameOf(id: string): string {
  const u = cs.users.peek(id);
  return u ? (u.display_name || u.username) : id.slice(0, 8);
}

function remember(users: User[]): void {
  cs.users.remember(users);
}

/** Looks up the users of `ids` this client cannot name yet (the SDK batches and remembers). */
async function learnNames(ids: Iterable<string>): Promise<void> {
  try {
    await cs.users.get(ids);
  } catch {
    // Names fall back to short ids.
  }
}

function showError(e: unknown): void {
  const text = e instanceof ChatSphereError ? e.detail : String(e);
  const bar = document.querySelector("#toast") ?? document.body.appendChild(h("div", { id: "toast" }));
  bar.setAttribute("role", "alert");
  bar.classList.remove("ok");
  bar.textContent = text;
  setTimeout(() => bar.remove(), 5000);
}

/** A passing message that is not an error. */
function notice(text: string): void {
  const bar = document.querySelector("#toast") ?? document.body.appendChild(h("div", { id: "toast" }));
  bar.setAttribute("role", "status");
  bar.classList.add("ok");
  bar.textContent = text;
  setTimeout(() => bar.remove(), 5000);
}

function time(iso: string): string {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// --- login --------------------------------------------------------------------------------------

function renderLogin(): void {
  const username = h("input", { name: "username", placeholder: "username or email", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", placeholder: "password", autocomplete: "current-password", required: true });
  const email = h("input", { name: "email", type: "email", placeholder: "email (to register)" });
  const submit = async (register: boolean) => {
    try {
      if (register) {
        await cs.register({ username: username.value, email: email.value, password: password.value });
      }
      await cs.login(username.value, password.value);
      await start();
    } catch (e) {
      showError(e);
    }
  };
  app.replaceChildren(
    h(
      "main",
      { class: "login" },
      h("h1", {}, "ChatSphere"),
      h(
        "form",
        { onsubmit: (e: Event) => (e.preventDefault(), void submit(false)) },
        username,
        password,
        h("button", { type: "submit", "data-testid": "login" }, "Log in"),
        h("details", {}, h("summary", {}, "New here? Register"), email, h("button", { type: "button", "data-testid": "register", onclick: () => void submit(true) }, "Register and log in")),
      ),
    ),
  );
}

// --- the main screen ---------------------------------------------------------------------------

async function start(): Promise<void> {
  const me = unwrap(await cs.rest.GET("/auth/me"));
  state.me = me;
  remember([me]);
  renderShell();
  await refreshConversations();
  const online = unwrap(await cs.rest.GET("/chat/online-users"));
  remember(online);
  state.online = new Set(online.map((u) => u.id));
  state.blocked = new Set(unwrap(await cs.rest.GET("/chat/blocks")).map((u) => u.id));
  const socket = cs.connect({
    positions: state.conversations.map((c) => ({ chat_type: c.chat_type, chat_id: c.chat_id, seq: c.last_message?.seq ?? 0 })),
  });
  state.socket = socket;
  socket.on("state", (s) => {
    document.querySelector("#status")!.textContent = s === "open" ? "" : s === "closed" ? "disconnected" : `${s}…`;
  });
  socket.on("stopped", () => {
    localStorage.removeItem(TOKENS);
    renderLogin();
  });
  socket.on("message", onMessage);
  socket.on("message_edited", (m) => replaceMessage(m));
  socket.on("message_deleted", (d) => {
    const m = state.messages.find((x) => x.id === d.id);
    if (m) replaceMessage({ ...m, is_deleted: true, content: "" });
  });
  socket.on("typing", (d) => {
    if (d.user_id === state.me?.id) return;
    state.typing.set(`${chatKey(d)}|${d.user_id}`, Date.now() + 4000);
    renderTyping();
    if (!cs.users.peek(d.user_id)) void learnNames([d.user_id]).then(renderTyping);
    setTimeout(renderTyping, 4100);
  });
  socket.on("read", (d) => {
    if (state.open && chatKey(d) === chatKey(state.open) && d.user_id !== state.me?.id) {
      state.reads.set(d.user_id, Math.max(d.seq, state.reads.get(d.user_id) ?? 0));
      renderSeen();
      if (!cs.users.peek(d.user_id)) void learnNames([d.user_id]).then(renderSeen);
    }
  });
  socket.on("presence", (d) => {
    if (d.status === "online") state.online.add(d.user_id);
    else state.online.delete(d.user_id);
    renderConversations();
    renderHeader();
  });
  socket.on("membership", async (d) => {
    const open = state.open && chatKey(state.open) === chatKey(d) ? state.open : null;
    // Someone new to this client (who just joined or was added): their name first.
    if (open) await learnNames(d.by ? [d.user_id, d.by] : [d.user_id]);
    if (open && state.open === open) note(membershipText(d));
    // The list changes only when the change is the user's own (joined, added, removed, …):
    // others coming and going in a large room would otherwise reload it on every event.
    if (d.user_id === state.me?.id) await refreshConversations();
  });
  socket.on("conversation_updated", (d) => {
    const c = state.conversations.find((x) => chatKey(x) === chatKey(d));
    if (c) c.name = d.name;
    renderConversations();
    if (state.open && chatKey(state.open) === chatKey(d)) {
      state.open.name = d.name;
      if (d.chat_type === "room") state.description = d.description ?? null;
      renderHeader();
      const who = d.by === state.me?.id ? "You" : nameOf(d.by);
      note(`${who} renamed the ${d.chat_type} to “${d.name}”`);
    }
  });
  // A mute or archive made on this device or another: the settings as they now are.
  socket.on("conversation_settings", (d) => {
    const c = state.conversations.find((x) => chatKey(x) === chatKey(d));
    if (!c) return;
    c.notifications_muted = d.notifications_muted;
    c.notifications_muted_until = d.notifications_muted_until;
    c.archived = d.archived;
    renderConversations();
    if (state.open && chatKey(state.open) === chatKey(d)) renderHeader();
  });
  socket.on("pin", (d) => {
    if (state.open && chatKey(state.open) === chatKey(d)) {
      document.querySelector(`#messages li[data-id="${d.message_id}"]`)?.classList.toggle("pinned", d.pinned);
    }
  });
  socket.on("reaction", (d) => {
    const m = state.messages.find((x) => x.id === d.message_id);
    if (!m) return;
    const list = [...(m.reactions ?? [])];
    const i = list.findIndex((r) => r.emoji === d.emoji);
    const mine = d.user_id === state.me?.id;
    const delta = d.action === "added" ? 1 : -1;
    if (i < 0 && delta > 0) list.push({ emoji: d.emoji, count: 1, me: mine });
    else if (i >= 0) {
      const r = list[i]!;
      const next = { ...r, count: r.count + delta, me: mine ? delta > 0 : r.me };
      if (next.count <= 0) list.splice(i, 1);
      else list[i] = next;
    }
    replaceMessage({ ...m, reactions: list });
  });
}

function renderShell(): void {
  app.replaceChildren(
    h(
      "div",
      { class: "shell" },
      h(
        "aside",
        {},
        h(
          "header",
          {},
          h("strong", { "data-testid": "me", title: nameOf(state.me!.id) }, nameOf(state.me!.id)),
          h("span", {},
            h("button", { class: "link", "data-testid": "change-password", onclick: () => changePassword() }, "Password"),
            h("button", { class: "link", onclick: () => void logout() }, "Log out"),
          ),
        ),
        h(
          "nav",
          { class: "actions" },
          h("button", { onclick: () => void browseRooms(), "data-testid": "browse-rooms" }, "Rooms"),
          h("button", { onclick: () => void newRoom(), "data-testid": "new-room" }, "New room"),
          h("button", { onclick: () => void newGroup() }, "New group"),
          h("button", { onclick: () => void newPrivate(), "data-testid": "new-private" }, "New chat"),
        ),
        h(
          "form",
          { class: "search", onsubmit: (e: Event) => (e.preventDefault(), void search((e.target as HTMLFormElement).q.value)) },
          h("input", { name: "q", type: "search", placeholder: "Search messages", "data-testid": "search" }),
        ),
        h("ul", { id: "conversations", "data-testid": "conversations" }),
      ),
      h(
        "section",
        { id: "chat" },
        h("header", { id: "chat-header" }, h("span", { class: "muted" }, "Pick a conversation")),
        h("div", { id: "status", role: "status" }),
        h("ol", { id: "messages", "data-testid": "messages" }),
        h("div", { id: "typing", "data-testid": "typing" }),
        h("div", { id: "seen", "data-testid": "seen" }),
        h("form", { id: "composer", hidden: true, onsubmit: (e: Event) => (e.preventDefault(), void sendCurrent()) },
          h("input", { id: "compose", name: "content", placeholder: "Message", autocomplete: "off", maxlength: "4000", "data-testid": "compose", oninput: () => state.open && state.socket?.typing(state.open) }),
          h("label", { class: "attach", title: "Attach a file" }, "Attach", h("input", { type: "file", hidden: true, "data-testid": "attach", onchange: (e: Event) => void attach(e.target as HTMLInputElement) })),
          h("button", { type: "submit", "data-testid": "send" }, "Send"),
        ),
      ),
    ),
  );
  document.querySelector("#messages")!.addEventListener("scroll", onScroll);
}

/** Changes the password; the server signs every other session of the account out. */
function changePassword(): void {
  const current = h("input", { name: "current", type: "password", placeholder: "current password", autocomplete: "current-password", required: true });
  const next = h("input", { name: "next", type: "password", placeholder: "new password (8 or more characters)", autocomplete: "new-password", minlength: "8", maxlength: "128", required: true });
  const dialog = h(
    "dialog",
    {},
    h(
      "form",
      {
        class: "stack",
        onsubmit: async (e: Event) => {
          e.preventDefault();
          try {
            const { error } = await cs.rest.POST("/auth/me/password", { body: { current_password: current.value, new_password: next.value } });
            if (error) throw new ChatSphereError(error.code, error.detail);
            dialog.close();
            dialog.remove();
            notice("Password changed; your other sessions are signed out.");
          } catch (e) {
            showError(e);
          }
        },
      },
      h("h2", {}, "Change password"),
      current,
      next,
      h("span", {}, h("button", { type: "submit", "data-testid": "save-password" }, "Change"), " ", h("button", { type: "button", onclick: () => (dialog.close(), dialog.remove()) }, "Cancel")),
    ),
  );
  document.body.append(dialog);
  dialog.showModal();
}

async function logout(): Promise<void> {
  state.socket?.close();
  await cs.logout().catch(() => undefined);
  location.reload();
}

async function refreshConversations(): Promise<void> {
  state.conversations = unwrap(await cs.rest.GET("/chat/conversations"));
  for (const c of state.conversations) state.socket?.track(c, c.last_message?.seq ?? 0);
  renderConversations();
  // The open conversation may have just become one of the user's (a first private message, a
  // room joined): its header gains the controls of their own conversations.
  renderHeader();
}

function renderConversations(): void {
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
          { onclick: () => void openConversation({ chat_type: c.chat_type, chat_id: c.chat_id, name: c.name }) },
          h("span", { class: `kind ${c.chat_type}` }, c.chat_type === "room" ? "#" : c.chat_type === "group" ? "◆" : online ? "●" : "○"),
          h("span", { class: "name" }, c.name),
          c.notifications_muted && h("span", { class: "muted", title: "Notifications muted", "data-testid": "muted" }, "🔕"),
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

/** Public rooms, 50 at a time by name, filtered by the start of their name. */
async function browseRooms(): Promise<void> {
  const PAGE = 50;
  const list = h("ul", {});
  const more = h("button", { type: "button", hidden: true }, "More");
  const filter = h("input", { type: "search", placeholder: "Filter by name", "data-testid": "room-filter" });
  const dialog = h("dialog", { class: "rooms" }, h("h2", {}, "Public rooms"), filter, list, more, h("button", { onclick: () => (dialog.close(), dialog.remove()) }, "Close"));
  const row = (r: Room) =>
    h(
      "li",
      {},
      h("span", {}, `#${r.name}`, h("small", {}, ` ${r.member_count} members`)),
      h(
        "button",
        {
          "data-room": r.name,
          onclick: async () => {
            try {
              if (!r.is_member) unwrap(await cs.rest.POST("/chat/rooms/{id}/join", { params: { path: { id: r.id } } }));
              dialog.close();
              dialog.remove();
              await refreshConversations();
              await openConversation({ chat_type: "room", chat_id: r.id, name: r.name });
            } catch (e) {
              showError(e);
            }
          },
        },
        r.is_member ? "Open" : "Join",
      ),
    );
  let asked = 0;
  const load = async (after?: string) => {
    const q = filter.value.trim() || undefined;
    const ask = ++asked;
    try {
      const rooms: Room[] = unwrap(await cs.rest.GET("/chat/rooms", { params: { query: { limit: PAGE, q, after } } }));
      if (ask !== asked) return; // a later filter's answer is the one to show
      if (!after) list.replaceChildren();
      list.append(...rooms.map(row));
      more.hidden = rooms.length < PAGE;
      more.onclick = () => void load(rooms.at(-1)?.name);
    } catch (e) {
      showError(e);
    }
  };
  filter.addEventListener("input", () => void load());
  document.body.append(dialog);
  dialog.showModal();
  await load();
}

async function newRoom(): Promise<void> {
  const name = prompt("Room name")?.trim();
  if (!name) return;
  try {
    const room = unwrap(await cs.rest.POST("/chat/rooms", { body: { name } }));
    await refreshConversations();
    await openConversation({ chat_type: "room", chat_id: room.id, name: room.name });
  } catch (e) {
    showError(e);
  }
}

async function findUser(username: string): Promise<User | null> {
  const found = unwrap(await cs.rest.GET("/auth/users", { params: { query: { q: username, limit: 10 } } }));
  remember(found);
  return found.find((u) => u.username.toLowerCase() === username.toLowerCase()) ?? null;
}

async function newGroup(): Promise<void> {
  const name = prompt("Group name")?.trim();
  if (!name) return;
  const names = (prompt("Members (usernames, comma-separated)") ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const members = (await Promise.all(names.map(findUser))).filter((u): u is User => u !== null);
    const group = unwrap(await cs.rest.POST("/chat/groups", { body: { name, member_ids: members.map((u) => u.id) } }));
    await refreshConversations();
    await openConversation({ chat_type: "group", chat_id: group.id, name: group.name });
  } catch (e) {
    showError(e);
  }
}

async function newPrivate(): Promise<void> {
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

// --- the open conversation ---------------------------------------------------------------------

async function openConversation(chat: ChatRef & { name: string }): Promise<void> {
  state.open = chat;
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
async function loadNames(chat: ChatRef, messages: Message[]): Promise<void> {
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

function renderHeader(): void {
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
async function rename(): Promise<void> {
  const chat = state.open;
  if (!chat || chat.chat_type === "private") return;
  const name = prompt("New name", chat.name)?.trim();
  if (!name || name === chat.name) return;
  const path = { id: chat.chat_id };
  const { error } =
    chat.chat_type === "room"
      ? await cs.rest.PATCH("/chat/rooms/{id}", { params: { path }, body: { name } })
      : await cs.rest.PATCH("/chat/groups/{id}", { params: { path }, body: { name } });
  if (error) showError(new ChatSphereError(error.code, error.detail));
}

function messageItem(m: Message): HTMLLIElement {
  const mine = m.from_user_id === state.me?.id;
  const item = h(
    "li",
    { class: mine ? "mine" : "", "data-seq": String(m.seq), "data-id": m.id },
    h("div", { class: "meta" }, h("strong", {}, nameOf(m.from_user_id)), " ", h("time", {}, time(m.created_at)), m.is_edited && !m.is_deleted ? h("em", {}, " (edited)") : null),
    m.content || m.is_deleted || !m.attachment ? h("div", { class: m.is_deleted ? "content deleted" : "content" }, m.is_deleted ? "message deleted" : m.content) : null,
  );
  if (m.attachment && !m.is_deleted) {
    const a = m.attachment;
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
    item.append(h("div", { class: "tools" }, h("button", { class: "link", "data-testid": "pin", onclick: () => void pin(m) }, "Pin")));
  }
  return item;
}

function renderMessages(toBottom: boolean): void {
  const list = document.querySelector<HTMLOListElement>("#messages");
  if (!list) return;
  const fromBottom = list.scrollHeight - list.scrollTop;
  list.replaceChildren(...(state.hasOlder ? [h("li", { class: "older muted" }, "Scroll up for older messages")] : []), ...state.messages.map(messageItem));
  if (toBottom) list.scrollTop = list.scrollHeight;
  else list.scrollTop = list.scrollHeight - fromBottom;
  renderSeen();
}

function replaceMessage(m: Message): void {
  const i = state.messages.findIndex((x) => x.id === m.id);
  if (i < 0) return;
  state.messages[i] = m;
  document.querySelector(`#messages li[data-id="${m.id}"]`)?.replaceWith(messageItem(m));
}

async function onScroll(): Promise<void> {
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

function renderTyping(): void {
  const el = document.querySelector("#typing");
  if (!el || !state.open) return;
  const now = Date.now();
  const prefix = `${chatKey(state.open)}|`;
  const who = [...state.typing].filter(([k, until]) => k.startsWith(prefix) && until > now).map(([k]) => nameOf(k.slice(prefix.length)));
  el.textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}

function renderSeen(): void {
  const el = document.querySelector("#seen");
  if (!el || !state.open) return;
  const lastMine = [...state.messages].reverse().find((m) => m.from_user_id === state.me?.id);
  const seenBy = lastMine ? [...state.reads].filter(([, seq]) => seq >= lastMine.seq).map(([id]) => nameOf(id)) : [];
  el.textContent = seenBy.length ? `Seen by ${seenBy.join(", ")}` : "";
}

function markRead(): void {
  const last = state.messages.at(-1);
  if (!state.open || !last || document.hidden) return;
  state.socket?.markRead(state.open, last.seq);
  const c = state.conversations.find((x) => chatKey(x) === chatKey(state.open!));
  if (c) c.unread_count = 0;
}

function onMessage(m: Message, chat: ChatRef): void {
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
    void refreshConversations();
    return;
  }
  c.last_message = m;
  c.archived = false; // news brings an archived conversation back, as the server has it
  if (!open && m.from_user_id !== state.me?.id) c.unread_count += 1;
  state.conversations = [c, ...state.conversations.filter((x) => x !== c)];
  renderConversations();
}

async function sendCurrent(): Promise<void> {
  const input = document.querySelector<HTMLInputElement>("#compose")!;
  const content = input.value.trim();
  if (!content || !state.open || !state.socket) return;
  input.value = "";
  try {
    await state.socket.send(state.open, content);
    if (!state.conversations.some((c) => state.open && chatKey(c) === chatKey(state.open))) await refreshConversations();
  } catch (e) {
    showError(e);
  }
}

async function edit(m: Message): Promise<void> {
  const content = prompt("Edit message", m.content)?.trim();
  if (!content || content === m.content) return;
  try {
    replaceMessage(unwrap(await cs.rest.PATCH("/chat/messages/{id}", { params: { path: { id: m.id } }, body: { content } })));
  } catch (e) {
    showError(e);
  }
}

async function remove(m: Message): Promise<void> {
  if (!confirm("Delete this message?")) return;
  const { error } = await cs.rest.DELETE("/chat/messages/{id}", { params: { path: { id: m.id } } });
  if (error) showError(new ChatSphereError(error.code, error.detail));
}

async function react(m: Message, emoji: string, add: boolean): Promise<void> {
  const params = { params: { path: { id: m.id, emoji } } };
  const { error } = add ? await cs.rest.PUT("/chat/messages/{id}/reactions/{emoji}", params) : await cs.rest.DELETE("/chat/messages/{id}/reactions/{emoji}", params);
  if (error) showError(new ChatSphereError(error.code, error.detail));
}

/** A line in the open conversation that is not a message (someone joined, was muted…). */
function note(text: string): void {
  const list = document.querySelector<HTMLOListElement>("#messages");
  if (!list) return;
  list.append(h("li", { class: "note muted", "data-testid": "note" }, text));
  list.scrollTop = list.scrollHeight;
}

function membershipText(d: { user_id: string; action: string; by?: string; until?: string }): string {
  const who = nameOf(d.user_id);
  const by = d.by ? ` by ${d.by === state.me?.id ? "you" : nameOf(d.by)}` : "";
  const until = d.until ? ` until ${time(d.until)}` : "";
  const verb: Record<string, string> = {
    joined: "joined", left: "left", added: "was added", removed: "was removed", banned: "was banned",
    unbanned: "was unbanned", muted: "was muted", unmuted: "was unmuted", promoted: "became a moderator", demoted: "is no longer a moderator",
  };
  return `${who} ${verb[d.action] ?? d.action}${by}${until}`;
}

/** A room's members, 200 at a time by username; its owner and moderators act on them from here. */
async function showMembers(): Promise<void> {
  const room = state.open;
  if (!room || room.chat_type !== "room") return;
  const PAGE = 200;
  const moderates = state.role === "owner" || state.role === "moderator";
  const act = async (what: "promote" | "mute" | "ban", userId: string) => {
    const path = { id: room.chat_id };
    const { error } =
      what === "promote"
        ? await cs.rest.PUT("/chat/rooms/{id}/moderators/{user_id}", { params: { path: { ...path, user_id: userId } } })
        : what === "mute"
          ? await cs.rest.POST("/chat/rooms/{id}/mutes", { params: { path }, body: { user_id: userId, until: new Date(Date.now() + 10 * 60_000).toISOString() } })
          : await cs.rest.POST("/chat/rooms/{id}/bans", { params: { path }, body: { user_id: userId } });
    if (error) showError(new ChatSphereError(error.code, error.detail));
    else {
      dialog.close();
      dialog.remove();
    }
  };
  const row = (u: User) =>
    h(
      "li",
      { "data-user": u.username },
      h("span", {}, u.display_name || u.username),
      moderates && u.id !== state.me?.id
        ? h(
            "span",
            { class: "tools-inline" },
            state.role === "owner" ? h("button", { class: "link", onclick: () => void act("promote", u.id) }, "Make moderator") : null,
            h("button", { class: "link", "data-testid": "mute", onclick: () => void act("mute", u.id) }, "Mute 10 min"),
            h("button", { class: "link", "data-testid": "ban", onclick: () => void act("ban", u.id) }, "Ban"),
          )
        : null,
    );
  const list = h("ul", {});
  const more = h("button", { type: "button", hidden: true }, "More");
  const dialog = h(
    "dialog",
    { "data-testid": "member-list" },
    h("h2", {}, `#${room.name}: members`),
    list,
    more,
    h("button", { onclick: () => (dialog.close(), dialog.remove()) }, "Close"),
  );
  const load = async (after?: string) => {
    try {
      const members = unwrap(await cs.rest.GET("/chat/rooms/{id}/members", { params: { path: { id: room.chat_id }, query: { limit: PAGE, after } } }));
      remember(members);
      list.append(...members.map(row));
      more.hidden = members.length < PAGE;
      more.onclick = () => void load(members.at(-1)?.username);
    } catch (e) {
      showError(e);
    }
  };
  document.body.append(dialog);
  dialog.showModal();
  await load();
}

async function search(q: string): Promise<void> {
  if (!q.trim()) return;
  try {
    const found = unwrap(await cs.rest.GET("/chat/search", { params: { query: { q } } }));
    const dialog = h(
      "dialog",
      { "data-testid": "search-results" },
      h("h2", {}, `“${q}”`),
      found.messages.length === 0 ? h("p", { class: "muted" }, "Nothing found") : null,
      h(
        "ul",
        {},
        ...found.messages.map((m) => {
          const chat = chatOf(m, state.me?.id ?? "");
          const c = state.conversations.find((x) => chatKey(x) === chatKey(chat));
          return h(
            "li",
            {},
            h("button", { class: "link", onclick: () => (dialog.close(), dialog.remove(), void openConversation({ ...chat, name: c?.name ?? "" })) }, `${c?.name ?? chat.chat_type}: ${m.content}`),
          );
        }),
      ),
      h("button", { onclick: () => (dialog.close(), dialog.remove()) }, "Close"),
    );
    document.body.append(dialog);
    dialog.showModal();
  } catch (e) {
    showError(e);
  }
}

async function pin(m: Message): Promise<void> {
  const { error } = await cs.rest.PUT("/chat/messages/{id}/pin", { params: { path: { id: m.id } } });
  if (error) showError(new ChatSphereError(error.code, error.detail));
}

async function showPins(): Promise<void> {
  if (!state.open) return;
  try {
    const pins = unwrap(await cs.rest.GET("/chat/pins/{chat_type}/{chat_id}", { params: { path: state.open } }));
    const dialog = h(
      "dialog",
      { "data-testid": "pins" },
      h("h2", {}, "Pinned"),
      pins.length === 0 ? h("p", { class: "muted" }, "No pinned messages") : null,
      h("ul", {}, ...pins.map((m) => h("li", {}, h("span", {}, `${nameOf(m.from_user_id)}: ${m.content}`)))),
      h("button", { onclick: () => (dialog.close(), dialog.remove()) }, "Close"),
    );
    document.body.append(dialog);
    dialog.showModal();
  } catch (e) {
    showError(e);
  }
}

async function toggleBlock(userId: string): Promise<void> {
  const params = { params: { path: { user_id: userId } } };
  const blocked = state.blocked.has(userId);
  const { error } = blocked ? await cs.rest.DELETE("/chat/blocks/{user_id}", params) : await cs.rest.PUT("/chat/blocks/{user_id}", params);
  if (error) return showError(new ChatSphereError(error.code, error.detail));
  if (blocked) state.blocked.delete(userId);
  else state.blocked.add(userId);
  renderHeader();
}

/** Archives one of the user's conversations (it comes back with its next message), or not. */
async function toggleArchive(c: Conversation): Promise<void> {
  const params = { params: { path: { chat_type: c.chat_type, chat_id: c.chat_id } } };
  const path = "/chat/conversations/{chat_type}/{chat_id}/archive";
  const { error } = c.archived ? await cs.rest.DELETE(path, params) : await cs.rest.PUT(path, params);
  if (error) return showError(new ChatSphereError(error.code, error.detail));
  c.archived = !c.archived;
  renderHeader();
  renderConversations();
}

/** Mutes or unmutes the notifications (pushes while away) of one of the user's conversations. */
async function toggleMute(c: Conversation): Promise<void> {
  const muted = !c.notifications_muted;
  const { error } = await cs.rest.PUT("/chat/conversations/{chat_type}/{chat_id}/notifications", {
    params: { path: { chat_type: c.chat_type, chat_id: c.chat_id } },
    body: { muted },
  });
  if (error) return showError(new ChatSphereError(error.code, error.detail));
  c.notifications_muted = muted;
  c.notifications_muted_until = null;
  renderHeader();
  renderConversations();
}

/** Uploads the chosen file (to the URL the server hands out) and sends it as a message. */
async function attach(input: HTMLInputElement): Promise<void> {
  const file = input.files?.[0];
  input.value = "";
  if (!file || !state.open || !state.socket) return;
  try {
    const contentType = file.type || "application/octet-stream";
    const ticket = unwrap(await cs.rest.POST("/chat/uploads", { body: { filename: file.name, content_type: contentType, size: file.size } }));
    const put = await fetch(ticket.url, { method: ticket.method, headers: { "content-type": contentType, ...(ticket.headers as Record<string, string>) }, body: file });
    if (!put.ok) throw new ChatSphereError("upload_failed", `the upload was refused (${put.status})`);
    const image = contentType.startsWith("image/");
    await state.socket.send(state.open, "", { message_type: image ? "image" : "file", attachment_id: ticket.upload_id });
  } catch (e) {
    showError(e);
  }
}

async function download(id: string, filename: string): Promise<void> {
  const { data, error } = await cs.rest.GET("/chat/attachments/{id}", { params: { path: { id } }, parseAs: "blob" });
  if (error || !(data instanceof Blob)) return showError(new ChatSphereError("not_found", "the file is not available"));
  const url = URL.createObjectURL(data);
  const a = h("a", { href: url, download: filename });
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

document.addEventListener("visibilitychange", markRead);

if (cs.loggedIn) {
  start().catch(() => {
    localStorage.removeItem(TOKENS);
    renderLogin();
  });
} else {
  renderLogin();
}
