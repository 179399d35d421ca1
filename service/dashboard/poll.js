// The polling loop: load the shown page's data, re-render it when it changed, and run buttons' actions.
import { $, el } from "./dom.js";
import { checkReadiness } from "./readiness.js";
import { state } from "./state.js";
import { disabledPanel } from "./widgets.js";

export function stopPolling() {
  clearTimeout(state.timer);
  state.timer = null;
}

export async function tick(force) {
  const page = state.page;
  const token = state.token;
  if (!page || !state.key) return;
  clearTimeout(state.timer);
  checkReadiness(force);
  if (!force && document.hidden) {
    state.timer = setTimeout(() => tick(false), 1000);
    return;
  }
  try {
    const data = await page.load(page.arg);
    if (token !== state.token) return;
    const json = JSON.stringify(data);
    if (json !== page.lastJson) {
      page.lastJson = json;
      page.body.replaceChildren(...[page.render(data)].flat());
    }
    $("status-text").textContent = `Updated ${new Date().toLocaleTimeString(undefined, { hour12: false })}`;
    $("status-error").textContent = "";
  } catch (err) {
    if (token !== state.token || !state.key) return;
    if (err.status === 403) {
      // The key lacks this section's scope: show the server's reason instead of the section.
      $("view").replaceChildren(disabledPanel(page.title, { reason: err.message, required: err.body.required_scopes || [] }));
      return;
    }
    if (err.status === 404) {
      page.body.replaceChildren(el("p", { class: "error" }, err.message));
      page.lastJson = null;
      $("status-text").textContent = "Not found";
      $("status-error").textContent = "";
    } else {
      $("status-error").textContent = err.message;
    }
  }
  if (token === state.token && page.interval) {
    state.timer = setTimeout(() => tick(false), page.interval);
  }
}

// Run a button's action, show a failure next to it (403 bodies say which scope is missing).
export async function runAction(button, action) {
  const old = button.textContent;
  button.disabled = true;
  const note = button.nextElementSibling && button.nextElementSibling.classList.contains("action-error") ? button.nextElementSibling : el("span", { class: "action-error error" });
  note.textContent = "";
  try {
    await action();
    tick(true);
  } catch (err) {
    note.textContent = err.message;
    if (!note.isConnected) button.after(note);
  } finally {
    button.disabled = false;
    button.textContent = old;
  }
}
