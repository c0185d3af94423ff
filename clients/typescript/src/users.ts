import { Emitter } from "./events.js";
import type { components } from "./generated/api.js";

/** A user as the lists show one (auth-service's users, without `email`, and chat-service's
 *  member lists alike). */
export type User = components["schemas"]["UserSummary"];

/** The most ids one `GET /auth/users?ids=` takes. */
const PER_REQUEST = 100;

export interface UserDirectoryEvents {
  /** What was known of a user changed: their display name, username, avatar or activity. */
  updated: [user: User];
}

/**
 * Names for user ids. A message carries only its author's id; `get()` looks up the ones not
 * known yet with `GET /auth/users?ids=` — calls made in the same tick share their requests,
 * 100 ids each — and remembers the answers, deactivated users included. Ids the server does
 * not know are not asked about again.
 *
 * It stays current: `user_updated` events replace what is known (sockets from
 * `ChatSphere.connect()` pass them in), and after a socket (re)connects — when such events may
 * have been missed — what is known counts as stale: `get()` answers with it at once and asks
 * again about those ids in the background. Each change fires `updated`.
 */
export class UserDirectory extends Emitter<UserDirectoryEvents> {
  private readonly known = new Map<string, User>();
  private readonly missing = new Set<string>();
  /** Known ids to ask about again the next time they are wanted. */
  private readonly stale = new Set<string>();
  /** Ids asked about in the request being gathered or in flight, with its outcome. */
  private readonly asking = new Map<string, Promise<void>>();
  private gathering: { ids: string[]; done: Promise<void> } | null = null;

  constructor(private readonly lookup: (ids: string[]) => Promise<User[]>) {
    super();
  }

  /** What is known of `id` now, without asking. */
  peek(id: string): User | undefined {
    return this.known.get(id);
  }

  /** Counts everything known as possibly out of date (see the class comment). */
  markStale(): void {
    for (const id of this.known.keys()) this.stale.add(id);
  }

  /** Takes in users the app already has (a member list, a search, the caller). */
  remember(users: Iterable<User>): void {
    for (const u of users) {
      const before = this.known.get(u.id);
      this.known.set(u.id, u);
      this.missing.delete(u.id);
      this.stale.delete(u.id);
      if (before && !sameShown(before, u)) this.emit("updated", u);
    }
  }

  /** The users of `ids` that exist, asking the server only about those not known yet (and, in
   *  the background, about stale ones). */
  async get(ids: Iterable<string>): Promise<Map<string, User>> {
    const wanted = [...new Set(ids)];
    const waits = new Set<Promise<void>>();
    for (const id of wanted) {
      const stale = this.stale.has(id);
      if ((this.known.has(id) && !stale) || this.missing.has(id)) continue;
      let wait = this.asking.get(id);
      if (!wait) {
        wait = this.gather(id);
        this.asking.set(id, wait);
      }
      // A stale user is answered as known; the answer to asking again comes as `updated`.
      if (stale) {
        this.stale.delete(id);
        wait.catch(() => this.stale.add(id));
      } else waits.add(wait);
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

/** Whether two records of a user show the same (what `updated` is about). */
function sameShown(a: User, b: User): boolean {
  return a.username === b.username && a.display_name === b.display_name && a.avatar_url === b.avatar_url && a.is_active === b.is_active;
}
