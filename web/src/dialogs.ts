// The dialogs over the main screen: public rooms, a room's members, search results, pins,
// the user's name and password.
import { chatKey, chatOf, unwrap, type User } from "@chatsphere/client";
import { cs, type Room, state } from "./session.js";
import { h, nameOf, notice, remember, showError, succeeded } from "./dom.js";
import { refreshConversation } from "./list.js";
import { openConversation } from "./conversation.js";

/** Public rooms, 50 at a time by name, filtered by the start of their name. */
export async function browseRooms(): Promise<void> {
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
              await refreshConversation({ chat_type: "room", chat_id: r.id });
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

/** A room's members, 200 at a time by username; its owner and moderators act on them from here. */
export async function showMembers(): Promise<void> {
  const room = state.open;
  if (!room || room.chat_type !== "room") return;
  const PAGE = 200;
  const moderates = state.role === "owner" || state.role === "moderator";
  const act = async (what: "promote" | "mute" | "ban", userId: string) => {
    const path = { id: room.chat_id };
    const answer =
      what === "promote"
        ? await cs.rest.PUT("/chat/rooms/{id}/moderators/{user_id}", { params: { path: { ...path, user_id: userId } } })
        : what === "mute"
          ? await cs.rest.POST("/chat/rooms/{id}/mutes", { params: { path }, body: { user_id: userId, until: new Date(Date.now() + 10 * 60_000).toISOString() } })
          : await cs.rest.POST("/chat/rooms/{id}/bans", { params: { path }, body: { user_id: userId } });
    if (succeeded(answer)) {
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

export async function search(q: string): Promise<void> {
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

export async function showPins(): Promise<void> {
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

/** Changes the user's display name; whoever shares a conversation with them sees the new one. */
export async function changeName(): Promise<void> {
  const me = state.me;
  const name = me ? prompt("Display name", nameOf(me.id))?.trim() : undefined;
  if (!name) return;
  try {
    // Redrawn, here and wherever the user is shown, by the directory's `updated`.
    remember([unwrap(await cs.rest.PATCH("/auth/me", { body: { display_name: name } }))]);
  } catch (e) {
    showError(e);
  }
}

/** Changes the password; the server signs every other session of the account out. */
export function changePassword(): void {
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
            unwrap(await cs.rest.POST("/auth/me/password", { body: { current_password: current.value, new_password: next.value } }));
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
