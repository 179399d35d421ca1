// The dashboard's entry point: wires the sign-in form, sign-out, hash changes and tab visibility, then renders.
// The unlearning service's admin dashboard: plain JavaScript modules, no build, no third-party code. Every
// number on screen comes from the public API, called with the user's own key. The key lives in this tab's
// sessionStorage only and travels in the Authorization header, never in a URL. All text from the API is
// inserted with textContent (never innerHTML), so a sample ID or reference cannot inject markup.
import { onUnauthorized } from "./api.js";
import { $ } from "./dom.js";
import { tick } from "./poll.js";
import { render } from "./router.js";
import { probeAccess, signIn, signOut } from "./session.js";
import { KEY_STORAGE, state } from "./state.js";

async function start() {
  onUnauthorized(signOut); // a 401 on any call means the key was revoked: back to the sign-in form
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("key-input").value.trim();
    $("login-error").textContent = "";
    try {
      await signIn(key);
      $("key-input").value = "";
      render();
    } catch (err) {
      state.key = null;
      sessionStorage.removeItem(KEY_STORAGE);
      $("login-error").textContent = err.status === 401 ? `Key rejected: ${err.message}` : err.message;
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", render);
  document.addEventListener("visibilitychange", () => !document.hidden && tick(true));
  if (state.key) {
    try {
      await probeAccess();
    } catch (err) {
      if (err.status !== 401) $("status-error").textContent = err.message;
    }
  }
  render();
}

start();
