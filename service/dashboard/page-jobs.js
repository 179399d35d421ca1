// The jobs list (filters, live progress) and one job's page (metrics, attempts), with cancel and retry.
import { api } from "./api.js";
import { el } from "./dom.js";
import { METRICS, ago, enc, fmt, short, when } from "./format.js";
import { runAction, tick } from "./poll.js";
import { state } from "./state.js";
import { badge, dl, progressBar, table } from "./widgets.js";

export const jobs = {
  title: "Jobs",
  section: "jobs",
  interval: 1000,
  setup(controls) {
    const form = el(
      "form",
      { class: "filters", onsubmit: (e) => e.preventDefault() },
      el("label", {}, "model ", el("input", { name: "model", size: 12, placeholder: "any" })),
      el(
        "label",
        {},
        "state ",
        el("select", { name: "state" }, ["", "running", "completed", "failed", "cancelled"].map((s) => el("option", { value: s }, s || "any"))),
      ),
    );
    form.addEventListener("input", () => tick(true));
    controls.append(form);
    this.form = form;
  },
  load() {
    const params = new URLSearchParams({ limit: "50" });
    const f = this.form && new FormData(this.form);
    if (f && f.get("model")) params.set("model", f.get("model").trim());
    if (f && f.get("state")) params.set("state", f.get("state"));
    return api(`/v1/jobs?${params}`);
  },
  render(page) {
    if (!page.items.length) return el("p", { class: "empty" }, "No jobs match.");
    const admin = state.access.admin && state.access.admin.ok;
    return table(
      ["job", "model", "state", "phase", "progress", "method", "attempts", "versions", "requests", "heartbeat", "created", "error", ""],
      page.items.map((j) =>
        el(
          "tr",
          { dataset: { jobId: j.id, state: j.state } },
          el("td", {}, el("a", { href: `#/jobs/${j.id}`, title: j.id, class: "mono" }, short(j.id))),
          el("td", {}, j.model),
          el("td", {}, badge(j.state)),
          el("td", {}, j.phase),
          el("td", { class: "progress-cell" }, progressBar(j.progress, j.id, j.state)),
          el("td", {}, j.method),
          el("td", { class: "num" }, j.attempts),
          el("td", {}, `${j.base_version} → ${j.result_version || "…"}`),
          el("td", { class: "num" }, j.request_ids.length),
          el("td", {}, j.state === "running" ? ago(j.heartbeat_age_s) : "–"),
          el("td", {}, when(j.created_at)),
          el("td", { class: "error" }, j.error || ""),
          el("td", {}, jobActions(j, admin)),
        ),
      ),
      { class: "jobs" },
    );
  },
};

export const job = {
  title: "Job",
  section: "jobs",
  interval: 1000,
  load: (id) => api(`/v1/jobs/${enc(id)}`),
  render(j) {
    const admin = state.access.admin && state.access.admin.ok;
    const base = j.metrics.base || {};
    const result = j.metrics.result || {};
    const attempts = j.metrics.attempts || [];
    return [
      dl([
        ["job", el("span", { class: "mono" }, j.id)],
        ["model", el("a", { href: `#/models/${enc(j.model)}` }, j.model)],
        ["state", badge(j.state)],
        ["phase", j.phase],
        ["progress", progressBar(j.progress, j.id, j.state)],
        ["method", j.method],
        ["versions", `${j.base_version} → ${j.result_version || "…"}`],
        ["attempts", String(j.attempts)],
        ["heartbeat", j.state === "running" ? ago(j.heartbeat_age_s) : when(j.heartbeat_at)],
        ["created / started / finished", `${when(j.created_at)} / ${when(j.started_at)} / ${when(j.finished_at)}`],
        j.error && ["error", el("span", { class: "error" }, j.error)],
        ["requests", j.request_ids.map((r) => [el("a", { href: `#/requests/${r}`, class: "mono" }, short(r)), " "])],
      ]),
      el("div", { class: "actions" }, jobActions(j, admin)),
      el("h2", {}, "Metrics"),
      table(
        ["metric", `${j.base_version} (before)`, `${j.result_version || "result"} (after)`],
        [...METRICS, { key: "runtime_s", label: "run time (s)", name: "" }].map((m) =>
          el("tr", {}, el("td", {}, m.label, m.name ? el("span", { class: "hint" }, ` ${m.name}`) : null), el("td", { class: "num" }, fmt(base[m.key])), el("td", { class: "num" }, fmt(result[m.key]))),
        ),
        { class: "compact" },
      ),
      el("h2", {}, "Attempts"),
      attempts.length
        ? table(
            ["#", "method", "passed", "run", "UA", "MIA", "RA", "TA", "notes: gate failures, error, warnings, classes switched off"],
            attempts.map((a, i) =>
              el(
                "tr",
                {},
                el("td", {}, i + 1),
                el("td", {}, a.method),
                el("td", {}, a.passed ? badge("passed", "completed") : badge("failed")),
                el("td", { class: "run" }, runSummary(a.runs)),
                METRICS.map((m) => el("td", { class: "num" }, fmt((a.metrics || {})[m.key]))),
                el("td", { class: "notes" }, attemptNotes(a)),
              ),
            ),
          )
        : el("p", { class: "empty" }, "No finished attempt yet."),
      el("h2", {}, "Parameters"),
      el("pre", { class: "json" }, JSON.stringify(j.params, null, 2)),
    ];
  },
};

// Why an attempt failed, and what it says beside its metrics: a class an earlier job deleted whole is switched
// off in the head (silenced_classes), and a forgotten class still predicted is a warning the gates may pass.
function attemptNotes(a) {
  const notes = [
    a.error,
    ...(a.gate_failures || []).map((g) => (typeof g === "string" ? g : JSON.stringify(g))),
    ...(a.warnings || []).map((w) => `warning: ${w}`),
    a.silenced_classes && a.silenced_classes.length ? `switched off (deleted by an earlier job): class ${a.silenced_classes.join(", ")}` : null,
  ].filter(Boolean);
  return notes.join("; ") || "–";
}

// What each run of an attempt did: a run sized by memorisation says so, since its params don't.
function runSummary(runs) {
  if (!runs || !runs.length) return "–";
  return runs
    .map((r) => {
      if (r.sized_by === "pull_back") return `taken back to ${fmt(r.kept_share, 2)} of the way`;
      const length =
        r.sized_by === "pushes" ? `${fmt(r.pushes_per_sample, 1)} pushes/sample` : r.epochs === undefined ? "nothing to forget" : `${fmt(r.epochs, 2)} epochs`;
      const where = r.trained === "last_layers" ? ", last layers" : "";
      return `${r.steps} steps (${length}${where})`;
    })
    .join(" + ");
}

function jobActions(j, admin) {
  if (j.state === "running") {
    return el(
      "button",
      {
        type: "button",
        class: "small danger",
        disabled: !admin,
        title: admin ? "ask the worker to stop between steps" : "cancelling a job needs an admin key",
        onclick: (e) => runAction(e.currentTarget, () => api(`/v1/jobs/${j.id}/cancel`, { method: "POST" })),
      },
      "Cancel",
    );
  }
  if (j.state === "failed") {
    // a job whose requests were retried already has none left to send: the button would only meet a 409
    const why = !admin ? "retrying a job needs an admin key" : !j.retryable ? "its requests were retried already" : null;
    return el(
      "button",
      {
        type: "button",
        class: "small",
        disabled: why !== null,
        title: why || "send the job's failed requests round again",
        onclick: (e) => runAction(e.currentTarget, () => api(`/v1/jobs/${j.id}/retry`, { method: "POST" })),
      },
      "Retry",
    );
  }
  return null;
}
