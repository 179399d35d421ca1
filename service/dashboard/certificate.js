// The request page's certificate: the signed deletion certificate's facts, a JSON download and how to verify it.
import { download } from "./api.js";
import { el } from "./dom.js";
import { METRICS, fmt, when } from "./format.js";
import { dl } from "./widgets.js";

export function certificateView(signed) {
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
      c.subject_count ? ["subjects", String(c.subject_count)] : null,
      c.subject_ids_sha256 ? ["subject IDs sha256", el("span", { class: "mono" }, c.subject_ids_sha256)] : null,
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
      // The server's bytes, not JSON.stringify of them: JavaScript writes 16.0 as 16, and the signature is
      // over the canonical JSON of the numbers as sent, so a re-serialised certificate never verified (a probe).
      el(
        "button",
        { type: "button", onclick: () => download(`/v1/deletion-requests/${encodeURIComponent(c.request_id)}/certificate`, `certificate-${c.request_id}.json`) },
        "Download certificate (JSON)",
      ),
    ),
    el(
      "p",
      { class: "hint" },
      "Verify it offline: ",
      el("code", {}, `unlearn public-key -o key.pem && unlearn verify-certificate certificate-${c.request_id}.json --public-key key.pem`),
    ),
    el("details", {}, el("summary", {}, "Raw JSON"), el("pre", { class: "json" }, JSON.stringify(signed, null, 2))),
  );
}
