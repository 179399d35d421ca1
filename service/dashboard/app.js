// The unlearning service's admin dashboard: plain JavaScript, no build, no third-party code.
// Every number on screen comes from the public API, called with the user's own key. The key lives in
// this tab's sessionStorage only and travels in the Authorization header, never in a URL. All text from
// the API is inserted with textContent (never innerHTML), so a sample ID or reference cannot inject markup.
"use strict";

(() => {
  const KEY_STORAGE = "unlearn.apiKey";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const METRICS = [
    { key: "unlearning_accuracy", label: "UA", name: "unlearning accuracy", colour: "#d1495b" },
    { key: "mia_score", label: "MIA", name: "membership inference", colour: "#edae49" },
    { key: "retain_accuracy", label: "RA", name: "retain accuracy", colour: "#00798c" },
    { key: "test_accuracy", label: "TA", name: "test accuracy", colour: "#30638e" },
  ];
  // Which scope each section needs (admin implies every scope). Requests accept any reading scope.
  const SECTION_SCOPE = { models: "jobs:read", jobs: "jobs:read", audit: "audit:read", requests: null };

  const state = {
    key: sessionStorage.getItem(KEY_STORAGE),
    access: {}, // scope -> {ok, reason, required}
    page: null, // the page being shown
    token: 0, // bumps on every navigation, so a late answer for an old page is dropped
    timer: null,
    certificates: new Map(), // request id -> signed certificate (fetched once per request)
  };

  // ---- small DOM helpers ------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  const $ = (id) => document.getElementById(id);
  const short = (id) => (id ? id.slice(0, 8) : "–");
  const fmt = (v, digits = 3) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(digits) : String(v));
  const pct = (p) => `${Math.round((p || 0) * 100)}%`;
  const pad = (n) => String(n).padStart(2, "0");
  const when = (ts) => {
    if (!ts) return "–";
    const d = new Date(ts); // shown in the browser's time zone
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };
  const shortId = (id) => (id && UUID.test(id) ? short(id) : id || "–");
  const ago = (s) => (s === null || s === undefined ? "–" : s < 90 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`);
  const enc = encodeURIComponent;

  function badge(text, kind) {
    return el("span", { class: `badge ${kind || text}` }, text);
  }

  function table(headers, rows, attrs) {
    return el(
      "table",
      attrs || {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows),
    );
  }

  function progressBar(progress, jobId, jobState) {
    const value = Math.round((progress || 0) * 100);
    const fill = el("span", { class: "fill" });
    fill.style.width = `${value}%`; // CSSOM, allowed by the page's style-src 'self' policy
    return el(
      "div",
      { class: `bar ${jobState || ""}` },
      el(
        "div",
        {
          class: "track",
          role: "progressbar",
          "aria-valuemin": 0,
          "aria-valuemax": 100,
          "aria-valuenow": value,
          "aria-label": `progress of job ${jobId || ""}`,
          dataset: jobId ? { jobId } : {},
        },
        fill,
      ),
      el("span", { class: "pct" }, `${value}%`),
    );
  }

  function dl(pairs) {
    return el(
      "dl",
      { class: "facts" },
      pairs.filter(Boolean).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]),
    );
  }

  // ---- the API ----------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.detail) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  async function api(path, { method = "GET", body, raw = false } = {}) {
    const headers = { Authorization: `Bearer ${state.key}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      throw new ApiError(0, { detail: `cannot reach the API (${err.message})` });
    }
    if (!res.ok) {
      let problem;
      try {
        problem = await res.json();
      } catch (_) {
        problem = { detail: `${res.status} ${res.statusText}` };
      }
      const error = new ApiError(res.status, problem);
      if (res.status === 401) signOut(`The server rejected the key: ${error.message}`);
      throw error;
    }
    return raw ? res : res.json();
  }

  async function download(path, filename) {
    const res = await api(path, { raw: true });
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  function saveJson(data, filename) {
    const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2) + "\n"], { type: "application/json" }));
    const a = el("a", { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  // Which scopes does this key hold? Each probe is a cheap read; a 403 body says what is missing.
  const PROBES = {
    "jobs:read": () => api("/v1/jobs?limit=1"),
    "audit:read": () => api("/v1/audit/export?format=jsonl&since=2999-01-01T00:00:00Z", { raw: true }),
    admin: () => api("/v1/keys"),
  };

  async function probeAccess() {
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

  function denied(section) {
    const scope = SECTION_SCOPE[section];
    const access = scope && state.access[scope];
    return access && !access.ok ? access : null;
  }

  // ---- sign in / out ------------------------------------------------------------------------------------

  async function signIn(key) {
    state.key = key;
    // Any valid key may read the public key; 401 means the key is wrong or revoked.
    await api("/v1/audit/public-key");
    await probeAccess();
    sessionStorage.setItem(KEY_STORAGE, key);
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    state.access = {};
    state.certificates.clear();
    stopPolling();
    $("login-error").textContent = message || "";
    showLogin();
  }

  function showLogin() {
    $("nav").hidden = true;
    $("who").hidden = true;
    $("view").replaceChildren();
    $("login").hidden = false;
    $("status-text").textContent = "Signed out";
    $("key-input").focus();
  }

  function showChrome() {
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

  // ---- pages --------------------------------------------------------------------------------------------

  function disabledPanel(title, access) {
    const required = (access.required || []).join(" or ");
    return el(
      "section",
      { class: "panel disabled", "data-disabled": "true" },
      el("h1", {}, title),
      el("p", { class: "disabled-reason" }, access.reason),
      el("p", { class: "hint" }, `This section needs a key with ${required} (or admin). Ask an admin for one.`),
    );
  }

  const pages = {
    models: {
      title: "Models",
      section: "models",
      interval: 3000,
      load: () => api("/v1/models"),
      render(models) {
        if (!models.length) return el("p", { class: "empty" }, "No models registered yet.");
        return table(
          ["model", "architecture", "status", "latest", "pending requests", "train / test samples", "method chain", "gates"],
          models.map((m) =>
            el(
              "tr",
              { dataset: { model: m.name } },
              el("td", {}, el("a", { href: `#/models/${enc(m.name)}` }, m.name)),
              el("td", {}, m.architecture),
              el("td", {}, badge(m.status), m.status_detail ? el("div", { class: "hint" }, m.status_detail) : null),
              el("td", {}, el("a", { href: `#/models/${enc(m.name)}` }, m.latest_version)),
              el("td", { class: "num" }, m.pending_requests),
              el("td", { class: "num" }, `${m.train_samples} / ${m.test_samples}`),
              el("td", {}, [m.default_method, ...m.fallback_methods].join(" → ")),
              el(
                "td",
                {},
                Object.keys(m.gates).length
                  ? el("ul", { class: "gates" }, Object.entries(m.gates).map(([k, v]) => el("li", {}, `${k} = ${v}`)))
                  : "none",
              ),
            ),
          ),
        );
      },
    },

    model: {
      title: "Model",
      section: "models",
      interval: 2000,
      async load(name) {
        const [model, versions] = await Promise.all([
          api(`/v1/models/${enc(name)}`),
          api(`/v1/models/${enc(name)}/versions`),
        ]);
        return { model, versions };
      },
      render({ model, versions }) {
        return [
          dl([
            ["latest version", model.latest_version],
            ["status", badge(model.status)],
            ["pending requests", String(model.pending_requests)],
            ["method chain", [model.default_method, ...model.fallback_methods].join(" → ")],
            ["gates", Object.entries(model.gates).map(([k, v]) => `${k} = ${v}`).join(", ") || "none"],
            ["samples", `${model.train_samples} train, ${model.test_samples} test`],
          ]),
          el("h2", {}, "Quality per version"),
          versionChart(versions),
          el("h2", {}, "Version line"),
          table(
            ["version", "parent", "forgotten", "UA", "MIA", "RA", "TA", "run time", "job", "created", "checkpoint sha256", ""],
            versions
              .slice()
              .reverse()
              .map((v) =>
                el(
                  "tr",
                  { dataset: { version: v.version } },
                  el("td", {}, el("strong", {}, v.version)),
                  el("td", {}, v.parent || "–"),
                  el("td", { class: "num" }, v.forgotten_count),
                  METRICS.map((m) => el("td", { class: "num" }, fmt(v.metrics[m.key]))),
                  el("td", { class: "num" }, v.metrics.runtime_s == null ? "–" : `${v.metrics.runtime_s.toFixed(1)} s`),
                  el("td", {}, v.job_id ? el("a", { href: `#/jobs/${v.job_id}`, title: v.job_id }, short(v.job_id)) : "–"),
                  el("td", {}, when(v.created_at)),
                  el("td", { class: "mono hash", title: v.checkpoint_sha256 }, v.checkpoint_sha256),
                  el(
                    "td",
                    {},
                    el(
                      "button",
                      {
                        type: "button",
                        class: "small",
                        onclick: (e) =>
                          runAction(e.currentTarget, () =>
                            download(
                              `/v1/models/${enc(model.name)}/versions/${v.version}/checkpoint`,
                              `${model.name}-${v.version}.safetensors`,
                            ),
                          ),
                      },
                      "download",
                    ),
                  ),
                ),
              ),
            { class: "versions" },
          ),
        ];
      },
    },

    jobs: {
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
    },

    job: {
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
                ["#", "method", "passed", "UA", "MIA", "RA", "TA", "gate failures"],
                attempts.map((a, i) =>
                  el(
                    "tr",
                    {},
                    el("td", {}, i + 1),
                    el("td", {}, a.method),
                    el("td", {}, a.passed ? badge("passed", "completed") : badge("failed")),
                    METRICS.map((m) => el("td", { class: "num" }, fmt((a.metrics || {})[m.key]))),
                    el("td", {}, (a.gate_failures || []).map((g) => (typeof g === "string" ? g : JSON.stringify(g))).join("; ") || "–"),
                  ),
                ),
              )
            : el("p", { class: "empty" }, "No finished attempt yet."),
          el("h2", {}, "Parameters"),
          el("pre", { class: "json" }, JSON.stringify(j.params, null, 2)),
        ];
      },
    },

    requests: {
      title: "Deletion requests",
      section: "requests",
      interval: 2000,
      setup(controls) {
        const search = el(
          "form",
          {
            class: "filters",
            role: "search",
            onsubmit: (e) => {
              e.preventDefault();
              tick(true);
            },
          },
          el("label", {}, "search ", el("input", { name: "q", size: 38, placeholder: "request id or exact reference", "aria-label": "request id or reference" })),
          el("label", {}, "model ", el("input", { name: "model", size: 10, placeholder: "any" })),
          el(
            "label",
            {},
            "state ",
            el("select", { name: "state" }, ["", "received", "queued", "processing", "completed", "failed", "cancelled"].map((s) => el("option", { value: s }, s || "any"))),
          ),
          el("button", { type: "submit" }, "Search"),
        );
        search.addEventListener("change", () => tick(true));
        this.search = search;
        const message = el("p", { class: "error", role: "alert" });
        const create = el(
          "form",
          {
            class: "new-request",
            onsubmit: async (e) => {
              e.preventDefault();
              const f = new FormData(create);
              const ids = String(f.get("ids")).split(/[\s,]+/).filter(Boolean);
              message.textContent = "";
              message.className = "error";
              try {
                const body = { sample_ids: ids };
                if (f.get("reference")) body.reference = String(f.get("reference"));
                const r = await api(`/v1/models/${enc(String(f.get("model")).trim())}/deletion-requests`, { method: "POST", body });
                message.className = "ok";
                message.textContent = `Accepted: request ${r.id} (${r.sample_count} samples), ${r.state}.`;
                create.reset();
                tick(true);
              } catch (err) {
                const unknown = err.body && err.body.unknown_ids ? ` (${err.body.unknown_ids.slice(0, 5).join(", ")}…)` : "";
                message.textContent = err.message + unknown;
              }
            },
          },
          el("label", {}, "model ", el("input", { name: "model", size: 12, required: true, value: "digits" })),
          el("label", {}, "reference ", el("input", { name: "reference", size: 16, placeholder: "ticket-123" })),
          el("label", { class: "wide" }, "sample IDs (one per line, or separated by commas)", el("textarea", { name: "ids", rows: 3, required: true, placeholder: "digits-0003\ndigits-0042" })),
          el("button", { type: "submit" }, "Submit deletion request"),
          message,
        );
        controls.append(search, el("details", {}, el("summary", {}, "New deletion request"), create));
      },
      async load() {
        const f = new FormData(this.search);
        const q = String(f.get("q") || "").trim();
        if (q && UUID.test(q)) {
          try {
            return { items: [await api(`/v1/deletion-requests/${enc(q)}`)], note: null };
          } catch (err) {
            if (err.status === 404) return { items: [], note: err.message };
            throw err;
          }
        }
        const params = new URLSearchParams({ limit: "50" });
        if (q) params.set("reference", q);
        if (f.get("model")) params.set("model", String(f.get("model")).trim());
        if (f.get("state")) params.set("state", String(f.get("state")));
        const page = await api(`/v1/deletion-requests?${params}`);
        return { items: page.items, note: null };
      },
      render({ items, note }) {
        if (!items.length) return el("p", { class: "empty" }, note || "No deletion requests match.");
        return table(
          ["request", "model", "state", "samples", "already forgotten", "reference", "job", "version", "created", "error", ""],
          items.map((r) =>
            el(
              "tr",
              { dataset: { requestId: r.id, state: r.state } },
              el("td", {}, el("a", { href: `#/requests/${r.id}`, class: "mono", title: r.id }, r.id)),
              el("td", {}, r.model),
              el("td", {}, badge(r.state)),
              el("td", { class: "num" }, r.sample_count),
              el("td", { class: "num" }, r.already_forgotten_count),
              el("td", {}, r.reference || "–"),
              el("td", {}, r.job_id ? el("a", { href: `#/jobs/${r.job_id}`, class: "mono", title: r.job_id }, short(r.job_id)) : "–"),
              el("td", {}, r.model_version || "–"),
              el("td", {}, when(r.created_at)),
              el("td", { class: "error" }, r.error || ""),
              el("td", {}, requestActions(r)),
            ),
          ),
          { class: "requests" },
        );
      },
    },

    request: {
      title: "Deletion request",
      section: "requests",
      interval: 2000,
      async load(id) {
        const req = await api(`/v1/deletion-requests/${enc(id)}`);
        let certificate = state.certificates.get(id) || null;
        if (!certificate && req.state === "completed") {
          certificate = await api(`/v1/deletion-requests/${enc(id)}/certificate`);
          state.certificates.set(id, certificate);
        }
        return { req, certificate };
      },
      render({ req, certificate }) {
        return [
          dl([
            ["request", el("span", { class: "mono" }, req.id)],
            ["model", req.model],
            ["state", badge(req.state)],
            ["samples", `${req.sample_count} (${req.already_forgotten_count} already forgotten)`],
            ["reference", req.reference || "–"],
            ["job", req.job_id ? el("a", { href: `#/jobs/${req.job_id}`, class: "mono" }, req.job_id) : "–"],
            ["version", req.model_version || "–"],
            ["created / completed", `${when(req.created_at)} / ${when(req.completed_at)}`],
            req.callback_url && ["webhook", `${req.callback_url} (${req.webhook_state || "–"})`],
            req.error && ["error", el("span", { class: "error" }, req.error)],
          ]),
          el("div", { class: "actions" }, requestActions(req)),
          el("h2", {}, "Certificate"),
          certificate ? certificateView(certificate) : el("p", { class: "empty" }, "A signed certificate is issued once the request is completed."),
        ];
      },
    },

    audit: {
      title: "Audit trail",
      section: "audit",
      interval: 0, // the whole trail is loaded on demand (Refresh), not polled
      setup(controls) {
        const result = el("div", { class: "verify-result", role: "status" });
        const filters = el(
          "form",
          { class: "filters", onsubmit: (e) => e.preventDefault() },
          el("label", {}, "model ", el("input", { name: "model", size: 10, placeholder: "any" })),
          el("label", {}, "since ", el("input", { name: "since", type: "date" })),
        );
        const query = (format) => {
          const f = new FormData(filters);
          const params = new URLSearchParams({ format });
          if (f.get("model")) params.set("model", String(f.get("model")).trim());
          if (f.get("since")) params.set("since", `${f.get("since")}T00:00:00Z`);
          return params;
        };
        this.query = query;
        const stamp = new Date().toISOString().slice(0, 10);
        controls.append(
          el(
            "div",
            { class: "actions" },
            el(
              "button",
              {
                type: "button",
                id: "verify-chain",
                onclick: (e) =>
                  runAction(e.currentTarget, async () => {
                    result.replaceChildren("Verifying…");
                    const v = await api("/v1/audit/verify");
                    result.replaceChildren(
                      v.ok
                        ? el("p", { class: "ok" }, `Chain verified: ${v.events} events, head `, el("span", { class: "mono" }, v.head))
                        : el("p", { class: "error" }, `Chain BROKEN at event seq ${v.first_broken_seq} (${v.events} events before it verify).`),
                    );
                  }),
              },
              "Verify chain",
            ),
            el("button", { type: "button", onclick: (e) => runAction(e.currentTarget, () => download(`/v1/audit/export?${query("jsonl")}`, `audit-${stamp}.jsonl`)) }, "Export JSONL"),
            el("button", { type: "button", onclick: (e) => runAction(e.currentTarget, () => download(`/v1/audit/export?${query("csv")}`, `audit-${stamp}.csv`)) }, "Export CSV"),
            el("button", { type: "button", class: "secondary", onclick: () => tick(true) }, "Refresh"),
            el("button", { type: "button", class: "secondary", onclick: (e) => runAction(e.currentTarget, () => download("/v1/audit/public-key", "unlearn-public-key.json")) }, "Public key"),
          ),
          filters,
          result,
        );
      },
      async load() {
        const res = await api(`/v1/audit/export?${this.query("jsonl")}`, { raw: true });
        const text = await res.text();
        const events = text.split("\n").filter(Boolean).map((line) => JSON.parse(line));
        return { total: events.length, events: events.slice(-100).reverse() };
      },
      render({ total, events }) {
        if (!events.length) return el("p", { class: "empty" }, "No audit events match.");
        return [
          el("p", { class: "hint" }, `${total} events; the newest ${events.length} are shown. Each event's hash covers the previous one.`),
          table(
            ["seq", "time", "actor", "action", "entity", "data", "hash"],
            events.map((ev) =>
              el(
                "tr",
                {},
                el("td", { class: "num" }, ev.seq),
                el("td", {}, when(ev.ts)),
                el("td", {}, ev.actor),
                el("td", {}, ev.action),
                el("td", {}, `${ev.entity_type} `, el("span", { class: "mono", title: ev.entity_id }, shortId(ev.entity_id))),
                el("td", { class: "data", title: JSON.stringify(ev.data) }, JSON.stringify(ev.data)),
                el("td", { class: "mono hash", title: ev.hash }, ev.hash.slice(0, 16)),
              ),
            ),
            { class: "audit" },
          ),
        ];
      },
    },
  };

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
      return el(
        "button",
        {
          type: "button",
          class: "small",
          disabled: !admin,
          title: admin ? "send the job's failed requests round again" : "retrying a job needs an admin key",
          onclick: (e) => runAction(e.currentTarget, () => api(`/v1/jobs/${j.id}/retry`, { method: "POST" })),
        },
        "Retry",
      );
    }
    return null;
  }

  function requestActions(r) {
    if (r.state !== "received" && r.state !== "queued") return null;
    return el(
      "button",
      {
        type: "button",
        class: "small danger",
        title: "withdraw this request before a job claims it (needs deletion:write)",
        onclick: (e) => runAction(e.currentTarget, () => api(`/v1/deletion-requests/${r.id}/cancel`, { method: "POST" })),
      },
      "Cancel",
    );
  }

  // Run a button's action, show a failure next to it (403 bodies say which scope is missing).
  async function runAction(button, action) {
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

  function certificateView(signed) {
    const c = signed.certificate;
    const s = signed.signature;
    return el(
      "section",
      { class: "certificate" },
      dl([
        ["type", c.type],
        ["request", el("span", { class: "mono" }, c.request_id)],
        ["reference", c.reference || "–"],
        ["model", c.model],
        ["samples", String(c.sample_count)],
        ["sample IDs sha256", el("span", { class: "mono" }, c.sample_ids_sha256)],
        ["before", [`${c.version_before.version} `, el("span", { class: "mono" }, c.version_before.checkpoint_sha256)]],
        ["after", [`${c.version_after.version} `, el("span", { class: "mono" }, c.version_after.checkpoint_sha256)]],
        ["method", c.method],
        ["metrics", METRICS.map((m) => `${m.label} ${fmt(c.metrics[m.key])}`).join(" · ")],
        ["requested / completed", `${when(c.requested_at)} / ${when(c.completed_at)}`],
        c.audit && ["audit event", [`seq ${c.audit.seq} `, el("span", { class: "mono" }, c.audit.event_hash)]],
        ["signature", `${s.algorithm} over ${s.canonicalization || "the canonical JSON"}`],
        ["signing key", el("span", { class: "mono" }, s.public_key)],
        ["signature value", el("span", { class: "mono wrap" }, s.value)],
      ]),
      el(
        "div",
        { class: "actions" },
        el("button", { type: "button", onclick: () => saveJson(signed, `certificate-${c.request_id}.json`) }, "Download certificate (JSON)"),
      ),
      el(
        "p",
        { class: "hint" },
        "Verify it offline: ",
        el("code", {}, `unlearn public-key -o key.pem && unlearn verify-certificate certificate-${short(c.request_id)}….json --public-key key.pem`),
      ),
      el("details", {}, el("summary", {}, "Raw JSON"), el("pre", { class: "json" }, JSON.stringify(signed, null, 2))),
    );
  }

  // UA, MIA, RA and TA per version, as an inline SVG line chart (0..1 on the y axis).
  function versionChart(versions) {
    const W = 760;
    const H = 300;
    const m = { top: 34, right: 20, bottom: 36, left: 46 };
    const iw = W - m.left - m.right;
    const ih = H - m.top - m.bottom;
    const n = versions.length;
    const x = (i) => m.left + (n === 1 ? iw / 2 : (i * iw) / (n - 1));
    const y = (v) => m.top + ih - v * ih;
    const nodes = [];
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      nodes.push(svg("line", { x1: m.left, x2: m.left + iw, y1: y(t), y2: y(t), class: "grid" }));
      nodes.push(svg("text", { x: m.left - 8, y: y(t) + 4, class: "tick", "text-anchor": "end" }, t.toFixed(2)));
    }
    const every = Math.max(1, Math.ceil(n / 16));
    versions.forEach((v, i) => {
      if (i % every === 0 || i === n - 1) {
        nodes.push(svg("text", { x: x(i), y: H - m.bottom + 18, class: "tick", "text-anchor": "middle", "data-version": v.version }, v.version));
      }
    });
    METRICS.forEach((metric, k) => {
      // Break the line where a value is missing (v1 has no UA/MIA: nothing was forgotten yet).
      let run = [];
      const flush = () => {
        if (run.length > 1) nodes.push(svg("polyline", { points: run.join(" "), fill: "none", stroke: metric.colour, "stroke-width": 2, class: "series" }));
        run = [];
      };
      versions.forEach((v, i) => {
        const value = v.metrics[metric.key];
        if (value === null || value === undefined) return flush();
        run.push(`${x(i).toFixed(1)},${y(value).toFixed(1)}`);
        nodes.push(
          svg(
            "circle",
            { cx: x(i), cy: y(value), r: 4, fill: metric.colour, class: "point", "data-version": v.version, "data-metric": metric.label },
            svg("title", {}, `${v.version} ${metric.label} (${metric.name}) = ${value.toFixed(3)}`),
          ),
        );
      });
      flush();
      const lx = m.left + [0, 180, 400, 540][k];
      nodes.push(svg("rect", { x: lx, y: 8, width: 12, height: 12, fill: metric.colour, rx: 2 }));
      nodes.push(svg("text", { x: lx + 18, y: 18, class: "legend" }, `${metric.label} ${metric.name}`));
    });
    return svg(
      "svg",
      { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": `UA, MIA, RA and TA for versions ${versions.map((v) => v.version).join(", ")}` },
      nodes,
    );
  }

  // ---- routing and polling ------------------------------------------------------------------------------

  function parseRoute() {
    // No hash: the first section this key may see (a product key lands on its deletion requests).
    const home = ["models", "jobs", "requests", "audit"].find((s) => !denied(s)) || "models";
    const [path, query] = (location.hash.replace(/^#/, "") || `/${home}`).split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    const [head, arg] = parts;
    const one = { models: "model", jobs: "job", requests: "request" };
    if (arg && one[head]) return { name: one[head], arg, query };
    if (pages[head]) return { name: head, arg: null, query };
    return { name: home, arg: null, query };
  }

  function stopPolling() {
    clearTimeout(state.timer);
    state.timer = null;
  }

  function render() {
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
    document.title = `${title} · Unlearning service`;
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

  async function tick(force) {
    const page = state.page;
    const token = state.token;
    if (!page || !state.key) return;
    clearTimeout(state.timer);
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
      } else {
        $("status-error").textContent = err.message;
      }
    }
    if (token === state.token && page.interval) {
      state.timer = setTimeout(() => tick(false), page.interval);
    }
  }

  // ---- start --------------------------------------------------------------------------------------------

  async function start() {
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
})();
