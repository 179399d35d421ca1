// Signing in and out: which scopes the key holds (probed with cheap reads), the login form and the header.
import { api } from "./api.js";
import { $ } from "./dom.js";
import { stopPolling } from "./poll.js";
import { KEY_STORAGE, denied, state } from "./state.js";
import { badge } from "./widgets.js";

// Which scopes does this key hold? Each probe is a cheap read; a 403 body says what is missing.
const PROBES = {
  "jobs:read": () => api("/v1/jobs?limit=1"),
  "audit:read": () => api("/v1/audit/export?format=jsonl&since=2999-01-01T00:00:00Z", { raw: true }),
  admin: () => api("/v1/keys"),
};

export async function probeAccess() {
  const entries = await Promise.all(
    Object.entries(PROBES).map(async ([scope, probe]) => {
      try {
        await probe();
        return [scope, { ok: true }];
      } catch (err) {
        if (err.status !== 403) throw err;
        return [scope, { ok: false, reason: err.message, required: err.body.required_scopes || [scope] }];
      }
    }),
  );
  state.access = Object.fromEntries(entries);
}

export async function signIn(key) {
  state.key = key;
  // Any valid key may read the public key; 401 means the key is wrong or revoked.
  await api("/v1/audit/public-key");
  await probeAccess();
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
