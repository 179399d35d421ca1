// The model page's chart: UA, MIA, RA and TA per version, as an inline SVG line chart (0..1 on the y axis).
import { svg } from "./dom.js";
import { METRICS } from "./format.js";

export function versionChart(versions) {
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
