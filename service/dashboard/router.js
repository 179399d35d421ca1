// Hash routing: which page a location.hash names, and showing that page (or why this key may not see it).
import { $, el, visible } from "./dom.js";
import { audit } from "./page-audit.js";
import { job, jobs } from "./page-jobs.js";
import { model, models } from "./page-models.js";
import { request, requests } from "./page-requests.js";
import { stopPolling, tick } from "./poll.js";
import { showChrome, showLogin } from "./session.js";
import { denied, state } from "./state.js";
import { disabledPanel } from "./widgets.js";

const pages = { models, model, jobs, job, requests, request, audit };

function decoded(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

function parseRoute() {
  // No hash: the first section this key may see (a product key lands on its deletion requests).
  const home = ["models", "jobs", "requests", "audit"].find((s) => !denied(s)) || "models";
  const [path, query] = (location.hash.replace(/^#/, "") || `/${home}`).split("?");
  // A malformed escape (`%E0%A4%A`) threw out of render: the page stayed on "Loading…" or on the last
  // page shown under a URL naming another (a probe). It is taken as written, and the page says not found.
  const parts = path.split("/").filter(Boolean).map(decoded);
  const [head, arg] = parts;
  const one = { models: "model", jobs: "job", requests: "request" };
  if (arg && one[head]) return { name: one[head], arg, query };
  if (pages[head]) return { name: head, arg: null, query };
  return { name: home, arg: null, query };
}

export function render() {
  stopPolling();
  if (!state.key) return showLogin();
  showChrome();
  const route = parseRoute();
  const page = Object.create(pages[route.name]);
  page.arg = route.arg;
  page.lastJson = null;
  state.page = page;
  state.token += 1;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.section === page.section);
  }
  const title = page.arg ? `${page.title} ${page.arg}` : page.title;
  document.title = `${visible(title)} · Unlearning service`;
  const d = denied(page.section);
  if (d) {
    $("view").replaceChildren(disabledPanel(page.title, d));
    $("status-text").textContent = "Section disabled for this key";
    return;
  }
  const controls = el("div", { class: "controls" });
  page.body = el("div", { class: "body" }, el("p", { class: "empty" }, "Loading…"));
  $("view").replaceChildren(
    el("section", { class: "panel", "data-page": route.name }, el("h1", {}, title), controls, page.body),
  );
  if (page.setup) page.setup(controls);
  if (route.query && page.search) {
    const q = new URLSearchParams(route.query).get("q");
    if (q) page.search.elements.q.value = q;
  }
  tick(true);
}
