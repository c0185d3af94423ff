// The ChatSphere browser app: plain TypeScript and the DOM on top of the SDK, one module per
// part of the screen — session (the client and the state), dom (helpers), login, shell (the
// main screen's frame), list (the conversations), conversation (the open one), messages (one
// message), dialogs, live (the socket's events).
import { cs, TOKENS } from "./session.js";
import { renderLogin } from "./login.js";
import { start } from "./shell.js";
import { markRead } from "./conversation.js";

import "./style.css";

document.addEventListener("visibilitychange", markRead);

if (cs.loggedIn) {
  start().catch(() => {
    localStorage.removeItem(TOKENS);
    renderLogin();
  });
} else {
  renderLogin();
}
