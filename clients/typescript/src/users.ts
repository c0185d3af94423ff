import type { components } from "./generated/api.js";

/** A user as the lists show one (auth-service's users, without `email`, and chat-service's
 *  member lists alike). */
export type User = components["schemas"]["UserSummary"];

/** The most ids one `GET /auth/users?ids=` takes. */
const PER_REQUEST = 100;

/**
 * Names for user ids. A message carries only its author's id; `get()` looks up the ones not
 * known yet with `GET /auth/users?ids=` — calls made in the same tick share their requests,
 * 100 ids each — and remembers the answers, deactivated users included. Ids the server does
 * not know are not asked about again.
 */
export class UserDirectory {
  private readonly known = new Map<string, User>();
  private readonly missing = new Set<string>();
  /** Ids asked about in the request being gathered or in flight, with its outcome. */
  private readonly asking = new Map<string, Promise<void>>();
  private gathering: { ids: string[]; done: Promise<void> } | null = null;

  constructor(private readonly lookup: (ids: string[]) => Promise<User[]>) {}

  /** What is known of `id` now, without asking. */
  peek(id: string): User | undefined {
    return this.known.get(id);
  }

  /** Takes in users the app already has (a member list, a search, the caller). */
  remember(users: Iterable<User>): void {
    for (const u of users) {
      this.known.set(u.id, u);
      this.missing.delete(u.id);
    }
  }

  /** The users of `ids` that exist, asking the server only about those not known yet. */
  async get(ids: Iterable<string>): Promise<Map<string, User>> {
    const wanted = [...new Set(ids)];
    const waits = new Set<Promise<void>>();
    for (const id of wanted) {
      if (this.known.has(id) || this.missing.has(id)) continue;
      let wait = this.asking.get(id);
      if (!wait) {
        wait = this.gather(id);
        this.asking.set(id, wait);
      }
      waits.add(wait);
    }
    await Promise.all(waits);
    const found = new Map<string, User>();
    for (const id of wanted) {
      const user = this.known.get(id);
      if (user) found.set(id, user);
    }
    return found;
  }

  /** Adds `id` to the request gathered in this tick. */
  private gather(id: string): Promise<void> {
    if (!this.gathering) {
      const ids: string[] = [];
      const done = Promise.resolve().then(() => this.ask(ids));
      this.gathering = { ids, done };
    }
    this.gathering.ids.push(id);
    return this.gathering.done;
  }

  private async ask(ids: string[]): Promise<void> {
    this.gathering = null;
    try {
      const chunks: string[][] = [];
      for (let i = 0; i < ids.length; i += PER_REQUEST) chunks.push(ids.slice(i, i + PER_REQUEST));
      const answers = await Promise.all(chunks.map((chunk) => this.lookup(chunk)));
      for (const users of answers) this.remember(users);
      for (const id of ids) if (!this.known.has(id)) this.missing.add(id);
    } finally {
      for (const id of ids) this.asking.delete(id);
    }
  }
}
