// The main screen: starting a session, its frame, and leaving it.
import { unwrap } from "@chatsphere/client";
import { cs, state } from "./session.js";
import { app, h, nameOf, remember } from "./dom.js";
import { newGroup, newPrivate, newRoom, refreshConversations } from "./list.js";
import { attach, onScroll, sendCurrent } from "./conversation.js";
import { browseRooms, changeName, changePassword, search } from "./dialogs.js";
import { avatar, setAvatar } from "./files.js";
import { listen } from "./live.js";

/** Signs in to the main screen: the user, their conversations, then the live connection. */
export async function start(): Promise<void> {
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
  listen(socket);
}

export function renderShell(): void {
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
          h("span", { id: "me", class: "me" }),
          h("span", {},
            h("button", { class: "link", "data-testid": "change-name", title: "Change your display name", onclick: () => void changeName() }, "Name"),
            h("label", { class: "link", title: "Choose a picture of you" }, "Avatar", h("input", { type: "file", accept: "image/*", hidden: true, "data-testid": "avatar-file", onchange: (e: Event) => void setAvatar(e.target as HTMLInputElement) })),
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
        h("div", { id: "replying", hidden: true, "data-testid": "replying" }),
        h("form", { id: "composer", hidden: true, onsubmit: (e: Event) => (e.preventDefault(), void sendCurrent()) },
          h("input", { id: "compose", name: "content", placeholder: "Message", autocomplete: "off", maxlength: "4000", "data-testid": "compose", oninput: () => state.open && state.socket?.typing(state.open) }),
          h("label", { class: "attach", title: "Attach a file" }, "Attach", h("input", { type: "file", hidden: true, "data-testid": "attach", onchange: (e: Event) => void attach(e.target as HTMLInputElement) })),
          h("button", { type: "submit", "data-testid": "send" }, "Send"),
        ),
      ),
    ),
  );
  document.querySelector("#messages")!.addEventListener("scroll", onScroll);
  renderMe();
}

/** The user's own picture and name, atop the list. */
export function renderMe(): void {
  const me = state.me;
  const name = me ? nameOf(me.id) : "";
  document.querySelector("#me")?.replaceChildren(...(me ? [avatar(me.id), h("strong", { "data-testid": "me", title: name }, name)] : []));
}

export async function logout(): Promise<void> {
  state.socket?.close();
  await cs.logout().catch(() => undefined);
  location.reload();
}
