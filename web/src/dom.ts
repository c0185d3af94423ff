// Small DOM helpers: building elements, toasts, names and times as the user reads them.
import { ChatSphereError, unwrap, type User } from "@chatsphere/client";
import { cs } from "./session.js";

export function h<K extends keyof HTMLElementTagNameMap>(
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

export const app = document.querySelector<HTMLDivElement>("#app")!;

export function nameOf(id: string): string {
  const u = cs.users.peek(id);
  return u ? (u.display_name || u.username) : id.slice(0, 8);
}

export function remember(users: User[]): void {
  cs.users.remember(users);
}

/** Looks up the users of `ids` this client cannot name yet (the SDK batches and remembers). */
export async function learnNames(ids: Iterable<string>): Promise<void> {
  try {
    await cs.users.get(ids);
  } catch {
    // Names fall back to short ids.
  }
}

/** Shows what went wrong: a thrown error, or the error body of a REST call (`{code, detail}`). */
export function showError(e: unknown): void {
  toast(e instanceof ChatSphereError ? e.detail : String(e), "alert");
}

/** Whether a REST call succeeded; when it did not, its error is shown. */
export function succeeded(result: { data?: unknown; error?: unknown; response: Response }): boolean {
  try {
    unwrap(result);
    return true;
  } catch (e) {
    showError(e);
    return false;
  }
}

/** A passing message that is not an error. */
export function notice(text: string): void {
  toast(text, "status");
}

/** The bar at the foot of the screen, for five seconds: an error (`alert`) or a notice. */
function toast(text: string, role: "alert" | "status"): void {
  const bar = document.querySelector("#toast") ?? document.body.appendChild(h("div", { id: "toast" }));
  bar.setAttribute("role", role);
  bar.classList.toggle("ok", role === "status");
  bar.textContent = text;
  setTimeout(() => bar.remove(), 5000);
}

export function time(iso: string): string {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

