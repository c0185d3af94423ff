// Two people use the browser app at once, each in a browser context of their own, through nginx
// (which spreads their sockets over both gateways), in Debian's Chromium with every request off
// loopback refused: they register, chat in a room and in a private chat, see each other typing
// and reading, and one reloads the page and catches up on what was sent meanwhile; at the end
// one changes her password, which signs her other browser out.
//   node web/e2e/two-users.mjs http://127.0.0.1:8000 [screenshot-dir] [gateway-metrics-urls]
import { chromium } from "playwright-core";

const base = process.argv[2] ?? "http://127.0.0.1:8000";
const shots = process.argv[3];
const gatewayMetrics = (process.argv[4] ?? "").split(",").filter(Boolean);
const run = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;
const TIMEOUT = 15_000;
/** A 16 × 16 PNG, for pictures and avatars. */
const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR42mM4EaBBEmIY1TCqYfhqAAC/xkAQBZlNgAAAAABJRU5ErkJggg==", "base64");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  await context.route("**/*", (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === "127.0.0.1" || host === "localhost" ? route.continue() : route.abort();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  return { page, errors };
}

async function person(name) {
  const { page, errors } = await newPage();
  const username = `${name}_${run}`;
  // The page runs under its content security policy: a script or style it blocks would show
  // as a console error, which fails the run at its end.
  const csp = (await page.goto(base))?.headers()["content-security-policy"] ?? "";
  check(csp.includes("script-src 'self'") && csp.includes("frame-ancestors 'none'"), `${name}'s page comes with its content security policy`);
  await page.locator("summary").click();
  await page.fill('input[name="username"]', username);
  await page.fill('input[name="password"]', "wonderland-e2e");
  await page.fill('input[name="email"]', `${username}@example.com`);
  await page.getByTestId("register").click();
  await page.getByTestId("me").waitFor();
  return { page, username, errors };
}

/** Answers the next prompt() with `text`. */
function answerPrompt(page, text) {
  page.once("dialog", (d) => d.accept(text));
}

/** Answers the next prompts, one text each. */
function answerPrompts(page, texts) {
  const queue = [...texts];
  const answer = (d) => {
    d.accept(queue.shift());
    if (queue.length === 0) page.off("dialog", answer);
  };
  page.on("dialog", answer);
}

async function gatewaysWithConnections() {
  const holding = [];
  for (const url of gatewayMetrics) {
    const text = await (await fetch(url)).text();
    const n = Number(/^gateway_connections (\d+)/m.exec(text)?.[1] ?? 0);
    if (n > 0) holding.push(url);
  }
  return holding;
}

let failed = false;
try {
  const alice = await person("alice");
  if (shots) await alice.page.screenshot({ path: `${shots}/app-empty.png` });
  const bob = await person("bob");

  if (gatewayMetrics.length > 1) {
    let holding = [];
    for (let i = 0; i < 50 && holding.length < gatewayMetrics.length; i++) {
      holding = await gatewaysWithConnections();
      await new Promise((r) => setTimeout(r, 100));
    }
    check(holding.length === gatewayMetrics.length, `the two users' sockets are on ${holding.length} of ${gatewayMetrics.length} gateways`);
  }

  // A room: Alice creates it, Bob finds it among the public rooms and joins.
  const room = `e2e-${run}`;
  answerPrompt(alice.page, room);
  await alice.page.getByTestId("new-room").click();
  await alice.page.getByTestId("chat-title").filter({ hasText: `#${room}` }).waitFor();
  await bob.page.getByTestId("browse-rooms").click();
  await bob.page.getByTestId("room-filter").fill(room);
  await bob.page.locator(`button[data-room="${room}"]`).click();
  await bob.page.getByTestId("chat-title").filter({ hasText: `#${room}` }).waitFor();
  await alice.page.getByTestId("note").filter({ hasText: `${bob.username} joined` }).waitFor();
  check(true, "Alice sees Bob join, by name");

  // Typing, then a message each way.
  await bob.page.getByTestId("compose").pressSequentially("hel");
  await alice.page.getByTestId("typing").filter({ hasText: `${bob.username} is typing` }).waitFor();
  check(true, "Alice sees Bob typing");
  await bob.page.getByTestId("compose").pressSequentially("lo Alice");
  await bob.page.getByTestId("send").click();
  await alice.page.getByTestId("messages").getByText("hello Alice").waitFor();
  check(true, "Alice receives Bob's room message");
  await alice.page.getByTestId("compose").fill("hi Bob, welcome");
  await alice.page.getByTestId("compose").press("Enter");
  await bob.page.getByTestId("messages").getByText("hi Bob, welcome").waitFor();
  check(true, "Bob receives Alice's reply");

  // A file: Alice attaches one, Bob sees it in the room.
  await alice.page.getByTestId("attach").setInputFiles({ name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("trail head at nine\n") });
  await bob.page.getByTestId("messages").getByTestId("file").filter({ hasText: "notes.txt" }).waitFor();
  check(true, "Bob sees the file Alice attached");
  // A picture: its thumbnail shows in the conversation (loaded, not just a button), though the
  // first fetch of it in Bob's browser fails (the network dropped it): it is asked for again.
  let thumbnailFetches = 0;
  await bob.page.route("**/chat/attachments/*/thumbnail", (route) => (++thumbnailFetches === 1 ? route.abort("connectionreset") : route.continue()));
  await alice.page.getByTestId("attach").setInputFiles({ name: "sunset.png", mimeType: "image/png", buffer: PNG });
  await bob.page.locator('[data-testid="thumbnail"]:not([hidden]) img').waitFor();
  check(await bob.page.locator('[data-testid="thumbnail"] img').evaluate((img) => img.naturalWidth > 0 && img.src.startsWith("blob:")), "Bob sees the picture Alice sent, inline");
  check(thumbnailFetches === 2, `its thumbnail shows though the first fetch failed (${thumbnailFetches} fetches)`);
  await bob.page.unroute("**/chat/attachments/*/thumbnail");
  // The dropped fetch is in Bob's console; nothing else may be.
  bob.errors.splice(0, bob.errors.length, ...bob.errors.filter((e) => !e.includes("ERR_CONNECTION_RESET")));
  // A pin: Alice (the room's owner) pins Bob's message; Bob finds it among the pinned ones.
  const bobsMessage = alice.page.locator("#messages li").filter({ hasText: "hello Alice" });
  await bobsMessage.hover();
  await bobsMessage.getByTestId("pin").click();
  await bob.page.locator("#messages li.pinned").filter({ hasText: "hello Alice" }).waitFor();
  await bob.page.getByTestId("pinned").click();
  await bob.page.getByTestId("pins").getByText("hello Alice").waitFor();
  await bob.page.getByTestId("pins").getByRole("button", { name: "Close" }).click();
  check(true, "Bob sees the pin, live and in the pinned list");
  // Search: Bob finds Alice's reply by a word prefix.
  await bob.page.getByTestId("search").fill("welc");
  await bob.page.getByTestId("search").press("Enter");
  await bob.page.getByTestId("search-results").getByText("hi Bob, welcome").waitFor();
  await bob.page.getByTestId("search-results").getByRole("button", { name: "Close" }).click();
  check(true, "Bob finds a message by search");
  // A reaction: Bob reacts to Alice's reply; Alice sees the count.
  const alicesReply = bob.page.locator("#messages li").filter({ hasText: "hi Bob, welcome" });
  await alicesReply.hover();
  await alicesReply.locator(".reaction.add").click();
  await alice.page.locator("#messages li").filter({ hasText: "hi Bob, welcome" }).locator(".reaction").filter({ hasText: "👍 1" }).waitFor();
  check(true, "Alice sees Bob's reaction");
  // A reply: Bob answers Alice's message; Alice sees his answer quote it, and it is stored as
  // an answer to it.
  await alicesReply.hover();
  await alicesReply.getByTestId("reply").click();
  await bob.page.getByTestId("replying").filter({ hasText: "hi Bob, welcome" }).waitFor();
  await bob.page.getByTestId("compose").fill("count me in");
  await bob.page.getByTestId("send").click();
  const answer = alice.page.locator("#messages li").filter({ hasText: "count me in" });
  await answer.getByTestId("quote").filter({ hasText: `${alice.username}: hi Bob, welcome` }).waitFor();
  check((await bob.page.getByTestId("replying").isHidden()) === true, "Bob's composer is no longer replying once sent");
  const answered = await alice.page.evaluate(async (text) => {
    const token = JSON.parse(localStorage.getItem("chatsphere.tokens")).access_token;
    const rooms = await (await fetch("/chat/conversations", { headers: { authorization: `Bearer ${token}` } })).json();
    const room = rooms.find((c) => c.last_message?.content === text);
    return room?.last_message?.reply_to_id ?? null;
  }, "count me in");
  const original = await alice.page.locator("#messages li").filter({ hasText: "hi Bob, welcome" }).first().getAttribute("data-id");
  check(answered !== null && answered === original, "Bob's answer is stored as a reply to Alice's message");
  if (shots) await alice.page.screenshot({ path: `${shots}/app-room.png` });

  // Moderation: Alice, the room's owner, mutes Bob from the member list; both see it happen,
  // and Bob's next send there is refused with the reason.
  await alice.page.getByTestId("members").click();
  await alice.page.getByTestId("member-list").locator(`li[data-user="${bob.username}"]`).getByTestId("mute").click();
  await bob.page.getByTestId("note").filter({ hasText: `${bob.username} was muted by ${alice.username}` }).waitFor();
  await alice.page.getByTestId("note").filter({ hasText: "was muted" }).waitFor();
  await bob.page.getByTestId("compose").fill("can I still talk?");
  await bob.page.getByTestId("send").click();
  await bob.page.getByRole("alert").filter({ hasText: "muted" }).waitFor();
  check(true, "Alice mutes Bob; both see it, and Bob's send is refused as muted");

  // A private chat: Alice starts it; it appears in Bob's list with an unread badge; when Bob
  // opens it, Alice sees that he has read it.
  answerPrompt(alice.page, bob.username);
  await alice.page.getByTestId("new-private").click();
  await alice.page.getByTestId("chat-title").filter({ hasText: bob.username }).waitFor();
  await alice.page.getByTestId("compose").fill("just between us");
  await alice.page.getByTestId("send").click();
  const bobsEntry = bob.page.locator(`li[data-chat^="private:"]`).filter({ hasText: alice.username });
  await bobsEntry.getByTestId("unread").filter({ hasText: "1" }).waitFor();
  await bobsEntry.getByTestId("preview").filter({ hasText: `${alice.username}: just between us` }).waitFor();
  check(true, "the private chat appears in Bob's list, one unread, its last message under its name");
  if (shots) await bob.page.screenshot({ path: `${shots}/app-unread.png` });
  await bobsEntry.locator("button").click();
  await bob.page.getByTestId("messages").getByText("just between us").waitFor();
  await alice.page.getByTestId("seen").filter({ hasText: `Seen by ${bob.username}` }).waitFor();
  check(true, "Alice sees that Bob has read her message");
  await alice.page.getByTestId("presence").filter({ hasText: "online" }).waitFor();
  check(true, "Alice sees Bob online");
  await alice.page.getByTestId("mute").waitFor();
  check(true, "the chat Alice just started offers her its Mute and Archive");
  if (shots) await alice.page.screenshot({ path: `${shots}/app-private.png` });

  // Bob reloads; Alice writes meanwhile; Bob's list shows the new messages and opening the
  // chat shows them all, once each, in order.
  const reloading = bob.page.reload();
  await alice.page.getByTestId("compose").fill("are you there?");
  await alice.page.getByTestId("send").click();
  await alice.page.getByTestId("compose").fill("second while away");
  await alice.page.getByTestId("send").click();
  await reloading;
  await bob.page.getByTestId("me").waitFor();
  await bob.page.locator(`li[data-chat^="private:"]`).filter({ hasText: alice.username }).locator("button").click();
  await bob.page.getByTestId("messages").getByText("second while away").waitFor();
  const texts = await bob.page.locator("#messages li .content").allInnerTexts();
  check(
    JSON.stringify(texts) === JSON.stringify(["just between us", "are you there?", "second while away"]),
    `after a reload Bob has the private chat in order, once each: ${JSON.stringify(texts)}`,
  );
  // And live delivery works again after the reload.
  await alice.page.getByTestId("compose").fill("welcome back");
  await alice.page.getByTestId("send").click();
  await bob.page.getByTestId("messages").getByText("welcome back").waitFor();
  check(true, "Bob receives live messages after the reload");

  // Edit and delete reach the other side.
  const last = alice.page.locator("#messages li.mine").last();
  await last.hover();
  answerPrompt(alice.page, "welcome back!");
  await last.getByTestId("edit").click();
  await bob.page.getByTestId("messages").getByText("welcome back! (edited)").waitFor().catch(async () => {
    await bob.page.getByTestId("messages").getByText("welcome back!").waitFor();
  });
  check(true, "Bob sees Alice's edit");
  const first = alice.page.locator("#messages li.mine").first();
  await first.hover();
  alice.page.once("dialog", (d) => d.accept());
  await first.getByTestId("delete").click();
  await bob.page.getByTestId("messages").getByText("message deleted").waitFor();
  check(true, "Bob sees Alice's delete");

  // A group, and history scrolling back: Alice starts a group with Bob and posts 55 messages
  // (over REST, paced under the send rate); Bob opens it, sees the latest page, scrolls up and
  // then has all 55, in order.
  const group = `g-${run}`;
  answerPrompts(alice.page, [group, bob.username]);
  await alice.page.locator("button", { hasText: "New group" }).click();
  await alice.page.getByTestId("chat-title").filter({ hasText: group }).waitFor();
  const groupId = (await alice.page.locator('li[data-chat^="group:"]').getAttribute("data-chat")).slice("group:".length);
  const token = await alice.page.evaluate(() => JSON.parse(localStorage.getItem("chatsphere.tokens")).access_token);
  for (let i = 1; i <= 55; i++) {
    const r = await fetch(`${base}/chat/messages/group/${groupId}`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ content: `old ${i}` }),
    });
    if (r.status !== 201) throw new Error(`posting to the group: ${r.status} ${await r.text()}`);
    await new Promise((r) => setTimeout(r, 70));
  }
  const bobsGroup = bob.page.locator(`li[data-chat="group:${groupId}"]`);
  await bobsGroup.waitFor();
  await bobsGroup.locator("button").click();
  await bob.page.getByTestId("messages").getByText("old 55", { exact: true }).waitFor();
  const firstPage = await bob.page.locator("#messages li[data-seq]").count();
  await bob.page.locator("#messages").evaluate((el) => (el.scrollTop = 0));
  await bob.page.getByTestId("messages").getByText("old 1", { exact: true }).waitFor();
  const all = await bob.page.locator("#messages li[data-seq] .content").allInnerTexts();
  check(
    firstPage === 50 && JSON.stringify(all) === JSON.stringify(Array.from({ length: 55 }, (_, i) => `old ${i + 1}`)),
    `Bob's group shows the latest 50, then all 55 in order after scrolling up (first page ${firstPage})`,
  );

  // Renaming: Alice, the group's owner, renames it; Bob, who has it open, sees the new name.
  const renamed = `summer-${run}`;
  answerPrompt(alice.page, renamed);
  await alice.page.getByTestId("rename").click();
  await bob.page.getByTestId("chat-title").filter({ hasText: renamed }).waitFor();
  await bob.page.getByTestId("note").filter({ hasText: `renamed the group to “${renamed}”` }).waitFor();
  check(true, "Bob sees the group renamed by Alice");

  // Notifications: Bob mutes the group; the list marks it, and so does a fresh read of it.
  await bob.page.getByTestId("mute").filter({ hasText: "Mute" }).click();
  await bob.page.getByTestId("mute").filter({ hasText: "Unmute" }).waitFor();
  await bobsGroup.getByTestId("muted").waitFor();
  const bobsToken = await bob.page.evaluate(() => JSON.parse(localStorage.getItem("chatsphere.tokens")).access_token);
  const listed = await (await fetch(`${base}/chat/conversations`, { headers: { authorization: `Bearer ${bobsToken}` } })).json();
  check(
    listed.some((c) => c.chat_id === groupId && c.notifications_muted === true),
    "Bob mutes the group: marked in his list and stored",
  );

  // Archiving: Bob archives the group; it leaves his list for the Archived section, and comes
  // back when Alice writes in it.
  await bob.page.getByTestId("archive").filter({ hasText: "Archive" }).click();
  await bob.page.getByTestId("show-archived").filter({ hasText: "Archived (1)" }).waitFor();
  check((await bobsGroup.count()) === 0, "Bob archives the group: it leaves his list");
  await alice.page.getByTestId("compose").fill("anyone for the archive?");
  await alice.page.getByTestId("send").click();
  await bobsGroup.waitFor();
  check((await bob.page.getByTestId("show-archived").count()) === 0, "a message brings the archived group back");

  // Blocking: Bob blocks Alice in their private chat; her next message there is refused.
  await bob.page.locator(`li[data-chat^="private:"]`).filter({ hasText: alice.username }).locator("button").click();
  await bob.page.getByTestId("block").filter({ hasText: "Block" }).click();
  await bob.page.getByTestId("block").filter({ hasText: "Unblock" }).waitFor();
  await alice.page.locator(`li[data-chat^="private:"]`).filter({ hasText: bob.username }).locator("button").click();
  await alice.page.getByTestId("compose").fill("hello?");
  await alice.page.getByTestId("send").click();
  await alice.page.getByRole("alert").filter({ hasText: "block" }).waitFor();
  check(true, "Bob blocks Alice and her private message is refused");

  // A password change: Alice, signed in on a second browser too, changes her password on the
  // first; the second is signed out, the first goes on, and only the new password signs in.
  const second = await newPage();
  await second.page.goto(base);
  await second.page.fill('input[name="username"]', alice.username);
  await second.page.fill('input[name="password"]', "wonderland-e2e");
  await second.page.getByTestId("login").click();
  await second.page.getByTestId("me").waitFor();
  // Settings follow the user: once the second browser's socket is live (it receives a message
  // sent after it opened the group), Alice mutes the group in the first; the second marks it.
  const secondsGroup = second.page.locator(`li[data-chat="group:${groupId}"]`);
  await secondsGroup.locator("button").click();
  await second.page.getByTestId("messages").getByText("anyone for the archive?").waitFor();
  await alice.page.locator(`li[data-chat="group:${groupId}"]`).locator("button").click();
  await alice.page.getByTestId("compose").fill("are you there, other me?");
  await alice.page.getByTestId("send").click();
  await second.page.getByTestId("messages").getByText("are you there, other me?").waitFor();
  await alice.page.getByTestId("mute").filter({ hasText: "Mute" }).click();
  await secondsGroup.getByTestId("muted").waitFor();
  await second.page.getByTestId("mute").filter({ hasText: "Unmute" }).waitFor();
  check(true, "Alice mutes the group in one browser; her other browser shows it at once");
  // Reads follow the user too: with the group open in her first browser only, a message Bob
  // sends there is read at once, and her second browser, once it has the message (its list
  // entry's tooltip shows the last one), counts it read as well.
  await second.page.locator(`li[data-chat^="private:"]`).filter({ hasText: bob.username }).locator("button").click();
  await second.page.getByTestId("chat-title").filter({ hasText: bob.username }).waitFor();
  await bob.page.locator(`li[data-chat="group:${groupId}"]`).locator("button").click();
  await bob.page.getByTestId("compose").fill("read this anywhere");
  await bob.page.getByTestId("send").click();
  await alice.page.getByTestId("messages").getByText("read this anywhere").waitFor();
  await second.page.waitForFunction(
    (key) => {
      const item = document.querySelector(`li[data-chat="${key}"]`);
      const button = item?.querySelector("button");
      return button?.title.endsWith(": read this anywhere") === true && item?.querySelector('[data-testid="unread"]') === null;
    },
    `group:${groupId}`,
  );
  check(true, "a message Alice reads in one browser is not unread in her other one");

  // Mentions: away from the group in both browsers, Alice sees it marked when Bob names her
  // there; opening it shows the message marked, and both browsers drop the mark.
  await alice.page.locator(`li[data-chat^="private:"]`).filter({ hasText: bob.username }).locator("button").click();
  await alice.page.getByTestId("chat-title").filter({ hasText: bob.username }).waitFor();
  await bob.page.getByTestId("compose").fill(`@${alice.username} a word for you`);
  await bob.page.getByTestId("send").click();
  const alicesGroup = alice.page.locator(`li[data-chat="group:${groupId}"]`);
  await alicesGroup.getByTestId("mentioned").waitFor();
  await secondsGroup.getByTestId("mentioned").waitFor();
  check(true, "Bob names Alice in the group: both her browsers mark it");
  await alicesGroup.locator("button").click();
  await alice.page.locator("#messages li.mentions-me").filter({ hasText: "a word for you" }).waitFor();
  await alicesGroup.getByTestId("mentioned").waitFor({ state: "detached" });
  await secondsGroup.getByTestId("mentioned").waitFor({ state: "detached" });
  check(true, "opening it shows the message marked, and both browsers drop the mark");
  answerPrompt(bob.page, `Bobby ${run}`);
  await bob.page.getByTestId("change-name").click();
  await bob.page.getByTestId("me").filter({ hasText: `Bobby ${run}` }).waitFor();
  await alice.page.locator(`li[data-chat^="private:"]`).filter({ hasText: `Bobby ${run}` }).waitFor();
  await alice.page.locator("#messages li").filter({ hasText: "a word for you" }).filter({ hasText: `Bobby ${run}` }).waitFor();
  check(true, "Bob renames himself: Alice's list and open conversation show the new name at once");
  await bob.page.getByTestId("avatar-file").setInputFiles({ name: "me.png", mimeType: "image/png", buffer: PNG });
  await bob.page.locator("#me [data-testid=avatar] img").waitFor();
  const bobsLine = alice.page.locator("#messages li").filter({ hasText: "a word for you" });
  await bobsLine.locator("[data-testid=avatar] img").waitFor();
  check(await bobsLine.locator("[data-testid=avatar] img").evaluate((img) => img.naturalWidth > 0), "Bob sets an avatar: it shows beside his message in Alice's browser at once");
  await alice.page.getByTestId("change-password").click();
  await alice.page.fill('input[name="current"]', "wonderland-e2e");
  await alice.page.fill('input[name="next"]', "looking-glass-e2e");
  await alice.page.getByTestId("save-password").click();
  await alice.page.getByRole("status").filter({ hasText: "Password changed" }).waitFor();
  await second.page.locator('input[name="username"]').waitFor();
  check(true, "Alice's other browser is signed out when she changes her password");
  await alice.page.locator(`li[data-chat="group:${groupId}"]`).locator("button").click();
  await alice.page.getByTestId("compose").fill("still here");
  await alice.page.getByTestId("send").click();
  await alice.page.getByTestId("messages").getByText("still here").waitFor();
  check(true, "the browser that changed the password goes on");
  await second.page.fill('input[name="username"]', alice.username);
  await second.page.fill('input[name="password"]', "looking-glass-e2e");
  await second.page.getByTestId("login").click();
  await second.page.getByTestId("me").waitFor();
  check(true, "the new password signs in");

  // (The second browser's console holds the refused refresh of its revoked login.)
  for (const p of [alice, bob]) check(p.errors.length === 0, `no errors in ${p.username}'s console ${JSON.stringify(p.errors)}`);
} catch (e) {
  failed = true;
  console.error(e.stack ?? String(e));
  for (const [i, ctx] of browser.contexts().entries()) {
    for (const page of ctx.pages()) {
      if (shots) await page.screenshot({ path: `${shots}/failure-${i}.png` }).catch(() => undefined);
    }
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
