// Files: uploading one, and the pictures shown from them — users' avatars and images'
// thumbnails. Each picture is fetched once (a thumbnail with the user's token) and shown from a
// blob: URL, so the page's Content-Security-Policy (images from the page's own origin, data: and
// blob: only) holds wherever the object store lives.
import { unwrap } from "@chatsphere/client";
import { cs } from "./session.js";
import { h, remember, showError } from "./dom.js";

/**
 * blob: URLs by what they were fetched from; `null` when it could not be. A failure is
 * forgotten after `RETRY_MS`, so a picture missed for a passing reason (the network dropped, a
 * service was busy) is asked for again, by the element still waiting for it or by the next one
 * that shows it, while a picture that keeps failing costs a request per `RETRY_MS` at most.
 */
const loaded = new Map<string, Promise<string | null>>();
const RETRY_MS = 2_000;
/** How many times an element on the page asks again for its picture, further apart each time. */
const RETRIES = 3;

function cached(key: string, load: () => Promise<Blob | null>): Promise<string | null> {
  let url = loaded.get(key);
  if (!url) {
    url = load()
      .then((blob) => (blob ? URL.createObjectURL(blob) : null))
      .catch(() => null);
    loaded.set(key, url);
    void url.then((src) => {
      if (src === null) setTimeout(() => loaded.delete(key), RETRY_MS);
    });
  }
  return url;
}

/**
 * Calls `show` with the picture's blob: URL once it has loaded. While `el` is on the page, a
 * failure is tried again after 2, 4 and 8 seconds; then the picture stays as it is drawn
 * without it until the element is drawn again.
 */
function showWhenLoaded(el: HTMLElement, key: string, load: () => Promise<Blob | null>, show: (src: string) => void, attempt = 0): void {
  void cached(key, load).then((src) => {
    if (src) {
      show(src);
    } else if (attempt < RETRIES) {
      setTimeout(() => {
        if (el.isConnected) showWhenLoaded(el, key, load, show, attempt + 1);
      }, RETRY_MS * 2 ** attempt + 100);
    }
  });
}

/**
 * The avatar served by this deployment (`/auth/avatars/…`, set with an upload), or null. An
 * `avatar_url` set to somewhere else is not fetched: the viewer's browser would call a host of
 * the other user's choosing.
 */
function servedAvatar(url: string | null | undefined): string | null {
  if (!url) return null;
  try {
    const u = new URL(url, location.origin);
    return u.origin === location.origin && u.pathname.startsWith("/auth/avatars/") ? u.href : null;
  } catch {
    return null;
  }
}

/** A user's picture: their avatar, or the first letter of their name until it loads or without one. */
export function avatar(userId: string): HTMLElement {
  const user = cs.users.peek(userId);
  const name = user?.display_name || user?.username || "?";
  const el = h("span", { class: "avatar", "data-testid": "avatar", "aria-hidden": "true" }, [...name][0]?.toUpperCase() ?? "?");
  const url = servedAvatar(user?.avatar_url);
  if (url) {
    const load = async () => {
      const res = await fetch(url);
      return res.ok ? res.blob() : null;
    };
    showWhenLoaded(el, url, load, (src) => el.replaceChildren(h("img", { src, alt: "" })));
  }
  return el;
}

/** An image attachment's thumbnail, shown once it has loaded; `open` on a click. */
export function thumbnail(attachmentId: string, filename: string, open: () => void): HTMLElement {
  const img = h("img", { alt: filename });
  const button = h("button", { class: "thumb", "data-testid": "thumbnail", title: `Open ${filename}`, hidden: true, onclick: open }, img);
  const load = async () => {
    const { data } = await cs.rest.GET("/chat/attachments/{id}/thumbnail", { params: { path: { id: attachmentId } }, parseAs: "blob" });
    return data instanceof Blob ? data : null;
  };
  showWhenLoaded(button, `thumbnail:${attachmentId}`, load, (src) => {
    img.src = src;
    button.hidden = false;
  });
  return button;
}

/** Makes the chosen image the user's avatar; everyone who shows the user sees it. */
export async function setAvatar(input: HTMLInputElement): Promise<void> {
  const file = input.files?.[0];
  input.value = "";
  if (!file) return;
  try {
    const uploadId = await cs.upload(file);
    // Redrawn by the directory's `updated`, as a change heard from the server would be.
    remember([unwrap(await cs.rest.PUT("/auth/me/avatar", { body: { upload_id: uploadId } }))]);
  } catch (e) {
    showError(e);
  }
}
