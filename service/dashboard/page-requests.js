// The deletion requests list (search, filters, the new-request form) and one request's page.
import { api } from "./api.js";
import { certificateView } from "./certificate.js";
import { el } from "./dom.js";
import { UUID, enc, short, when } from "./format.js";
import { runAction, tick } from "./poll.js";
import { state } from "./state.js";
import { badge, dl, table } from "./widgets.js";

export const requests = {
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
            if (f.get("reason") === "mislabeled") body.reason = "mislabeled";
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
      el(
        "label",
        { title: "erasure: the samples' labels are right (privacy, takedowns); mislabeled: they are wrong (poisoned or mistaken labels)" },
        "reason ",
        el("select", { name: "reason" }, ["erasure", "mislabeled"].map((s) => el("option", { value: s }, s))),
      ),
      el("label", { class: "wide" }, "sample IDs (one per line, or separated by commas)", el("textarea", { name: "ids", rows: 3, required: true, placeholder: "digits-0003\ndigits-0042" })),
      el("button", { type: "submit" }, "Submit deletion request"),
      message,
    );
    const writes = state.access["deletion:write"];
    controls.append(
      search,
      writes && !writes.ok
        ? el("p", { class: "hint" }, `New deletion requests: ${writes.reason}.`)
        : el("details", {}, el("summary", {}, "New deletion request"), create),
    );
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
};

export const request = {
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
        req.subject_ids && req.subject_ids.length ? ["subjects", req.subject_ids.join(", ")] : null,
        ["reference", req.reference || "–"],
        ["reason", req.reason || "erasure"],
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
};

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
