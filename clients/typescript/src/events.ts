type Listener = (...args: never[]) => void;

/** A small typed event emitter: `on` returns the function that removes the listener. */
export class Emitter<Events extends { [K in keyof Events]: unknown[] }> {
  private readonly listeners = new Map<keyof Events, Set<Listener>>();

  on<K extends keyof Events>(event: K, listener: (...args: Events[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as unknown as Listener);
    return () => set?.delete(listener as unknown as Listener);
  }

  protected emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        (listener as unknown as (...args: Events[K]) => void)(...args);
      } catch (e) {
        // A listener's bug must not break the socket's bookkeeping.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

/** An error the server answered with: REST (`status` set) or a WebSocket `error` frame. */
export class ChatSphereError extends Error {
  constructor(
    readonly code: string,
    readonly detail: string,
    readonly status?: number,
    readonly fields?: Record<string, string>,
    /** With `rate_limited`: the milliseconds until the same request can succeed. */
    readonly retryAfterMs?: number,
  ) {
    super(`${code}: ${detail}`);
    this.name = "ChatSphereError";
  }
}
