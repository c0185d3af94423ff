// Live events: what each event from the socket changes on screen.
import { chatKey, type ChatSocket } from "@chatsphere/client";
import { cs, state, TOKENS } from "./session.js";
import { learnNames, nameOf, showError } from "./dom.js";
import { renderLogin } from "./login.js";
import { refreshConversation, renderConversations } from "./list.js";
import { renderMe } from "./shell.js";
import {
  membershipText,
  note,
  onMessage,
  renderHeader,
  renderMessages,
  renderSeen,
  renderTyping,
  replaceMessage,
} from "./conversation.js";

/** Keeps the screen in step with `socket`'s events, and with what becomes known of users. */
export function listen(socket: ChatSocket): void {
  // Someone shown here (or the user) changed their display name or avatar: heard live
  // (`user_updated`) or found on asking again after a reconnect. Every name and picture on
  // screen comes from `cs.users`, except a private chat's entry.
  const stopRedrawing = cs.users.on("updated", (u) => {
    for (const c of state.conversations) if (c.chat_type === "private" && c.chat_id === u.id) c.name = u.display_name;
    if (state.open?.chat_type === "private" && state.open.chat_id === u.id) state.open.name = u.display_name;
    renderConversations();
    renderHeader();
    renderMessages(false);
    if (u.id === state.me?.id) renderMe();
  });
  // After a reconnect the SDK counts what it knew of users as stale: asking about the ones on
  // screen brings any change made meanwhile, as `updated` (the first time, names not known yet).
  socket.on("ready", () => {
    const privates = state.conversations.filter((c) => c.chat_type === "private").map((c) => c.chat_id);
    void learnNames([...state.messages.map((m) => m.from_user_id), ...privates]);
  });
  socket.on("state", (s) => {
    document.querySelector("#status")!.textContent = s === "open" ? "" : s === "closed" ? "disconnected" : `${s}…`;
  });
  socket.on("stopped", () => {
    // The directory outlives the session: the next sign-in listens anew.
    stopRedrawing();
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
    if (d.user_id === state.me?.id) {
      // Read on another device of the user's: what is left unread here goes by it.
      const c = state.conversations.find((x) => chatKey(x) === chatKey(d));
      if (c && d.seq > c.last_read_seq) {
        c.last_read_seq = d.seq;
        c.unread_count = Math.max(0, (c.last_message?.seq ?? 0) - d.seq);
        if (c.unread_count === 0) c.mention_count = 0;
        renderConversations();
      }
      return;
    }
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
    if (d.user_id === state.me?.id) await refreshConversation(d).catch(showError);
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
