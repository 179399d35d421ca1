// Signing in and out: which scopes the key holds (it says, GET /v1/keys/me), the login form and the header.
import { api } from "./api.js";
import { $ } from "./dom.js";
import { stopPolling } from "./poll.js";
import { KEY_STORAGE, denied, state } from "./state.js";
import { badge } from "./widgets.js";

// Which scopes does this key hold? Asked once (GET /v1/keys/me); admin holds every scope. It probed reads
// that answered 403, which left a deletion:write key without a badge and the console full of errors.
const SCOPES = ["deletion:write", "jobs:read", "audit:read", "admin"];

export async function probeAccess() {
  const me = await api("/v1/keys/me");
  const held = new Set(me.scopes || []);
  state.access = Object.fromEntries(
    SCOPES.map((scope) =>
      held.has(scope) || held.has("admin")
        ? [scope, { ok: true }]
        : [scope, { ok: false, reason: `this API key lacks the scope '${scope}'`, required: [scope] }],
    ),
  );
}

export async function signIn(key) {
  state.key = key;
  await probeAccess(); // any valid key may read itself; 401 means the key is wrong or revoked
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  state.access = {};
  state.certificates.clear();
  stopPolling();
  $("login-error").textContent = message || "";
  showLogin();
}

export function showLogin() {
  $("nav").hidden = true;
  $("who").hidden = true;
  $("view").replaceChildren();
  $("login").hidden = false;
  $("status-text").textContent = "Signed out";
  $("key-input").focus();
}

export function showChrome() {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  const prefix = (state.key || "").split("_").slice(0, 2).join("_");
  $("who-key").textContent = `key ${prefix}…`;
  $("who-key").title = "the key's public prefix; the secret is not shown";
  const held = Object.entries(state.access).filter(([, a]) => a.ok).map(([s]) => s);
  $("who-scopes").replaceChildren(...(held.includes("admin") ? ["admin"] : held).map((s) => badge(s, "scope")));
  for (const link of document.querySelectorAll("#nav a")) {
    const d = denied(link.dataset.section);
    link.classList.toggle("disabled", Boolean(d));
    if (d) {
      link.title = d.reason;
      link.setAttribute("aria-disabled", "true");
    } else {
      link.removeAttribute("title");
      link.removeAttribute("aria-disabled");
    }
  }
}
