// What the app knows: the SDK client (its tokens kept in localStorage) and the state the
// screens are drawn from.
import {
  ChatSphere,
  type ChatRef,
  type ChatSocket,
  type components,
  type Message,
  type TokenPair,
  type User,
} from "@chatsphere/client";

export type Conversation = components["schemas"]["ConversationSummary"];
export type Room = components["schemas"]["Room"];

export const TOKENS = "chatsphere.tokens";

export const cs = new ChatSphere({
  baseUrl: location.origin,
  tokens: {
    load: () => JSON.parse(localStorage.getItem(TOKENS) ?? "null") as TokenPair | null,
    save: (t) => (t ? localStorage.setItem(TOKENS, JSON.stringify(t)) : localStorage.removeItem(TOKENS)),
  },
});

export const state = {
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
  /** The message the next send answers (`reply_to_id`), if the user chose one. */
  replyTo: null as Message | null,
};
