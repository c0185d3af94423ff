// Opens /docs and /redoc in Debian's Chromium with every request off loopback refused (as on
// a machine without internet) and waits until each page shows operations of the API.
//   node web/docs/render-check.mjs http://127.0.0.1:8000 [screenshot-dir]
import { chromium } from "playwright-core";

const base = process.argv[2] ?? "http://127.0.0.1:8000";
const shots = process.argv[3];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let failed = false;
try {
  for (const page of ["docs", "redoc"]) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const refused = [];
    await context.route("**/*", (route) => {
      const host = new URL(route.request().url()).hostname;
      if (host === "127.0.0.1" || host === "localhost") return route.continue();
      refused.push(route.request().url());
      return route.abort();
    });
    const tab = await context.newPage();
    await tab.goto(`${base}/${page}`);
    try {
      // The document's title and an operation's path, as text the page shows.
      await tab.waitForFunction(
        () => document.body.innerText.includes("ChatSphere API") && document.body.innerText.includes("/chat/rooms"),
        null,
        { timeout: 30000 },
      );
      console.log(`/${page}: operations rendered${refused.length ? ` (refused off-loopback: ${refused.join(", ")})` : ""}`);
    } catch (e) {
      failed = true;
      console.error(`/${page}: no operation rendered within 30 s (refused: ${refused.join(", ") || "none"}): ${e.message}`);
    }
    if (shots) await tab.screenshot({ path: `${shots}/${page}.png` });
    await context.close();
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
