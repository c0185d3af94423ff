import createClient, { type Client } from "openapi-fetch";

import { ChatSphereError } from "./events.js";
import type { components, paths } from "./generated/api.js";
import { ChatSocket, type SocketOptions, type WebSocketConstructor } from "./socket.js";
import { UserDirectory } from "./users.js";

export type TokenPair = components["schemas"]["TokenPair"];

/** Where a login's tokens are kept between page loads (e.g. `localStorage`); memory by default. */
export interface TokenStore {
  load(): TokenPair | null;
  save(tokens: TokenPair | null): void;
}

export interface ChatSphereOptions {
  /** The public entry, e.g. `http://localhost:8000` (nginx or the ingress). */
  baseUrl: string;
  /** The WebSocket URL; defaults to `baseUrl` with `ws(s)://` and path `/ws`. */
  wsUrl?: string | (() => string);
  /** `json` (default) or `msgpack` frames. */
  encoding?: "json" | "msgpack";
  /** The WebSocket implementation in Node (e.g. `ws`); browsers have one. */
  WebSocket?: WebSocketConstructor;
  /** The fetch implementation; the global one by default. */
  fetch?: typeof fetch;
  tokens?: TokenStore;
  /** Refresh this long before the access token expires (default 60 s). */
  refreshMarginMs?: number;
}

/** The claims of an access token the client reads (it never verifies them: the server does). */
function expiryOf(token: string): number | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const json = JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/"))) as { exp?: number };
    return typeof json.exp === "number" ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

class MemoryStore implements TokenStore {
  private tokens: TokenPair | null = null;
  load(): TokenPair | null {
    return this.tokens;
  }
  save(tokens: TokenPair | null): void {
    this.tokens = tokens;
  }
}

/**
 * A ChatSphere client: a login (tokens refreshed before they expire; refresh tokens rotate and
 * are kept in `tokens`), typed REST calls (`rest`, generated from the OpenAPI document; every
 * call carries the access token and is retried once after a refresh on 401), and sockets
 * (`connect()`).
 */
export class ChatSphere {
  /** Typed REST calls: `await cs.rest.GET("/chat/rooms")`. */
  readonly rest: Client<paths>;
  /** Users by id, looked up in batches and remembered: `await cs.users.get(authorIds)`. */
  readonly users: UserDirectory;
  private readonly store: TokenStore;
  /** Whether a socket of this client was ready before (the next `ready` is a reconnect). */
  private connectedBefore = false;
  private refreshing: Promise<TokenPair> | null = null;
  private readonly fetchImpl: typeof fetch;

  constructor(private readonly options: ChatSphereOptions) {
    this.store = options.tokens ?? new MemoryStore();
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.rest = createClient<paths>({
      baseUrl: options.baseUrl.replace(/\/$/, ""),
      fetch: (request: Request) => this.authorizedFetch(request),
    });
    this.users = new UserDirectory(async (ids) =>
      unwrap(await this.rest.GET("/auth/users", { params: { query: { ids: ids.join(",") } } })),
    );
  }

  /** Whether a login is held. */
  get loggedIn(): boolean {
    return this.store.load() !== null;
  }

  /** Creates an account (it does not log in). */
  async register(body: components["schemas"]["RegisterRequest"]): Promise<components["schemas"]["UserBody"]> {
    return unwrap(await this.rest.POST("/auth/register", { body }));
  }

  /** Logs in with a username (or email) and password; the tokens are kept. */
  async login(username: string, password: string): Promise<TokenPair> {
    const tokens = unwrap(await this.rest.POST("/auth/login", { body: { username, password } }));
    this.store.save(tokens);
    return tokens;
  }

  /** Ends the login on the server (its sockets close) and forgets the tokens. */
  async logout(): Promise<void> {
    const tokens = this.store.load();
    this.store.save(null);
    if (tokens) await this.rest.POST("/auth/logout", { body: { refresh_token: tokens.refresh_token } });
  }

  /** A valid access token, refreshed first when it is about to expire. */
  async accessToken(): Promise<string> {
    const tokens = this.store.load();
    if (!tokens) throw new ChatSphereError("unauthorized", "not logged in", 401);
    const exp = expiryOf(tokens.access_token);
    const margin = this.options.refreshMarginMs ?? 60_000;
    if (exp !== null && exp - Date.now() < margin) return (await this.refresh()).access_token;
    return tokens.access_token;
  }

  /**
   * Rotates the refresh token. Concurrent callers share one refresh (a second presentation of
   * the same refresh token would be taken as reuse after the server's grace period).
   */
  refresh(): Promise<TokenPair> {
    this.refreshing ??= (async () => {
      try {
        const tokens = this.store.load();
        if (!tokens) throw new ChatSphereError("unauthorized", "not logged in", 401);
        const res = await this.fetchImpl(`${this.options.baseUrl.replace(/\/$/, "")}/auth/refresh`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ refresh_token: tokens.refresh_token }),
        });
        if (!res.ok) {
          if (res.status === 401) this.store.save(null);
          throw await errorOf(res);
        }
        const fresh = (await res.json()) as TokenPair;
        this.store.save(fresh);
        return fresh;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  /**
   * Uploads a file for a message (its `attachment_id`) or an avatar (`PUT /auth/me/avatar`):
   * declares it (`POST /chat/uploads`), then sends the bytes straight to the storage URL the
   * server hands out, with the headers it names (never the access token: that URL is signed).
   * Resolves to the upload id. `filename` and `contentType` default to the file's own.
   */
  async upload(file: Blob, options: { filename?: string; contentType?: string } = {}): Promise<string> {
    const filename = options.filename ?? (file as Blob & { name?: string }).name ?? "file";
    const contentType = options.contentType ?? (file.type || "application/octet-stream");
    const ticket = unwrap(
      await this.rest.POST("/chat/uploads", { body: { filename, content_type: contentType, size: file.size } }),
    );
    // The local store's URLs are paths on the public entry; an object store's are absolute.
    const url = new URL(ticket.url, this.options.baseUrl);
    const res = await this.fetchImpl(url, {
      method: ticket.method,
      headers: { "content-type": contentType, ...(ticket.headers as Record<string, string>) },
      body: file,
    });
    if (!res.ok) {
      const refused = await errorOf(res);
      throw new ChatSphereError(
        refused.code.startsWith("http_") ? "upload_failed" : refused.code,
        `the storage refused the upload (${res.status}): ${refused.detail}`,
        res.status,
      );
    }
    return ticket.upload_id;
  }

  /** Opens a socket that stays connected until `close()` (see `ChatSocket`). */
  connect(extra: Partial<Pick<SocketOptions, "positions" | "backoff">> = {}): ChatSocket {
    const wsUrl =
      this.options.wsUrl ?? `${this.options.baseUrl.replace(/^http/, "ws").replace(/\/$/, "")}/ws`;
    const socket = new ChatSocket({
      ...extra,
      url: wsUrl,
      encoding: this.options.encoding,
      WebSocket: this.options.WebSocket,
      auth: {
        // A one-time ticket, so no access token appears in a URL (or a proxy's log).
        connectParams: async () => {
          const ticket = unwrap(await this.rest.POST("/auth/ws-ticket"));
          return { ticket: ticket.ticket };
        },
        freshToken: async () => (await this.refresh()).access_token,
        renew: async () => {
          await this.refresh();
        },
      },
    });
    // A changed display name or avatar replaces what `users` knew of the user; while no socket
    // was connected, such changes went unheard, so what was known then is asked about again.
    socket.on("user_updated", (user) => this.users.remember([user]));
    socket.on("ready", () => {
      if (this.connectedBefore) this.users.markStale();
      this.connectedBefore = true;
    });
    return socket;
  }

  private async authorizedFetch(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname;
    const open = ["/auth/login", "/auth/register", "/auth/refresh"].includes(path);
    if (open || !this.store.load()) return this.fetchImpl(request);
    const retry = request.clone();
    request.headers.set("authorization", `Bearer ${await this.accessToken()}`);
    const res = await this.fetchImpl(request);
    if (res.status !== 401) return res;
    // The token may have been revoked or expired early (clock skew): refresh once and retry.
    try {
      const fresh = await this.refresh();
      retry.headers.set("authorization", `Bearer ${fresh.access_token}`);
      return await this.fetchImpl(retry);
    } catch {
      return res;
    }
  }
}

/**
 * The data of an openapi-fetch result (`undefined` for a 204 No Content), or its error as a
 * `ChatSphereError`: the status decides, since a success without a body has no data either.
 */
export function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.response.ok) return result.data as T;
  const body = (result.error ?? {}) as { code?: string; detail?: string; fields?: Record<string, string> };
  throw new ChatSphereError(
    body.code ?? `http_${result.response.status}`,
    body.detail ?? result.response.statusText,
    result.response.status,
    body.fields,
  );
}

async function errorOf(res: Response): Promise<ChatSphereError> {
  const body = (await res.json().catch(() => ({}))) as { code?: string; detail?: string };
  return new ChatSphereError(body.code ?? `http_${res.status}`, body.detail ?? res.statusText, res.status);
}
