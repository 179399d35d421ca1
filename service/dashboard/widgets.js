// Reusable pieces of a page: badges, tables, progress bars, fact lists and the "section disabled" panel.
import { el } from "./dom.js";

export function badge(text, kind) {
  return el("span", { class: `badge ${kind || text}` }, text);
}

export function table(headers, rows, attrs) {
  return el(
    "table",
    attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows),
  );
}

export function progressBar(progress, jobId, jobState) {
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

export function dl(pairs) {
  return el(
    "dl",
    { class: "facts" },
    pairs.filter(Boolean).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]),
  );
}

export function disabledPanel(title, access) {
  const required = (access.required || []).join(" or ");
  return el(
    "section",
    { class: "panel disabled", "data-disabled": "true" },
    el("h1", {}, title),
    el("p", { class: "disabled-reason" }, access.reason),
    el("p", { class: "hint" }, `This section needs a key with ${required} (or admin). Ask an admin for one.`),
  );
}
