// The login and registration screen.
import { cs } from "./session.js";
import { app, h, showError } from "./dom.js";
import { start } from "./shell.js";

export function renderLogin(): void {
  const username = h("input", { name: "username", placeholder: "username or email", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", placeholder: "password", autocomplete: "current-password", required: true });
  const email = h("input", { name: "email", type: "email", placeholder: "email (to register)" });
  const submit = async (register: boolean) => {
    try {
      if (register) {
        await cs.register({ username: username.value, email: email.value, password: password.value });
      }
      await cs.login(username.value, password.value);
      await start();
    } catch (e) {
      showError(e);
    }
  };
  app.replaceChildren(
    h(
      "main",
      { class: "login" },
      h("h1", {}, "ChatSphere"),
      h(
        "form",
        { onsubmit: (e: Event) => (e.preventDefault(), void submit(false)) },
        username,
        password,
        h("button", { type: "submit", "data-testid": "login" }, "Log in"),
        h("details", {}, h("summary", {}, "New here? Register"), email, h("button", { type: "button", "data-testid": "register", onclick: () => void submit(true) }, "Register and log in")),
      ),
    ),
  );
}
