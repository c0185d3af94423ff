export { Backoff } from "./backoff.js";
export { ChatSphere, unwrap, type ChatSphereOptions, type TokenPair, type TokenStore } from "./client.js";
export { ChatSphereError } from "./events.js";
export * from "./protocol.js";
export {
  ChatSocket,
  type SocketAuth,
  type SocketEvents,
  type SocketOptions,
  type SocketState,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./socket.js";
export { UserDirectory, type User, type UserDirectoryEvents } from "./users.js";
export type { components, paths } from "./generated/api.js";
