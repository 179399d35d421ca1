// The models list and one model's page (its version line, quality chart and checkpoint downloads).
import { api, download } from "./api.js";
import { versionChart } from "./chart.js";
import { el } from "./dom.js";
import { METRICS, enc, fmt, short, when } from "./format.js";
import { runAction } from "./poll.js";
import { badge, dl, table } from "./widgets.js";

// "1000+" when the service stopped counting (it counts a model's pending requests up to a cap).
const pendingCount = (m) => `${m.pending_requests}${m.pending_requests_capped ? "+" : ""}`;

export const models = {
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
          el("td", { class: "num" }, pendingCount(m)),
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
};

export const model = {
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
        ["pending requests", pendingCount(model)],
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
                // a deleted checkpoint's download was offered, and answered 410 (a probe)
                v.checkpoint_retired_at
                  ? el("span", { class: "muted", title: `deleted ${v.checkpoint_retired_at}` }, "deleted")
                  : el(
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
};
