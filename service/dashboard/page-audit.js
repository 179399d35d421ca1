// The audit trail page: the newest events, chain verification, JSONL/CSV export and the public key.
import { api, download, saveBlob } from "./api.js";
import { el } from "./dom.js";
import { shortId, when } from "./format.js";
import { runAction, tick } from "./poll.js";
import { table } from "./widgets.js";

async function savePem() {
  const { pem } = await api("/v1/audit/public-key");
  saveBlob(new Blob([pem], { type: "application/x-pem-file" }), "unlearn-public-key.pem");
}

export const audit = {
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
                    : el(
                        "p",
                        { class: "error" },
                        // a failed check that names no event (the head, the stored tree) read "seq undefined" (a probe)
                        v.first_broken_seq
                          ? `Chain BROKEN at event seq ${v.first_broken_seq} (${v.events} events before it verify).`
                          : `Audit log check FAILED: ${v.detail || "no reason given"}`,
                      ),
                );
              }),
          },
          "Verify chain",
        ),
        el("button", { type: "button", onclick: (e) => runAction(e.currentTarget, () => download(`/v1/audit/export?${query("jsonl")}`, `audit-${stamp}.jsonl`)) }, "Export JSONL"),
        el("button", { type: "button", onclick: (e) => runAction(e.currentTarget, () => download(`/v1/audit/export?${query("csv")}`, `audit-${stamp}.csv`)) }, "Export CSV"),
        el("button", { type: "button", class: "secondary", onclick: () => tick(true) }, "Refresh"),
        // PEM, which every --public-key takes (the JSON it saved was refused by the CLI: a probe)
        el("button", { type: "button", class: "secondary", onclick: (e) => runAction(e.currentTarget, savePem) }, "Public key (PEM)"),
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
};
