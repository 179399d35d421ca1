// Formatting of values for display (ids, numbers, times) and the four quality metrics' labels and colours.

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const METRICS = [
  { key: "unlearning_accuracy", label: "UA", name: "unlearning accuracy", colour: "#d1495b" },
  { key: "mia_score", label: "MIA", name: "membership inference", colour: "#edae49" },
  { key: "retain_accuracy", label: "RA", name: "retain accuracy", colour: "#00798c" },
  { key: "test_accuracy", label: "TA", name: "test accuracy", colour: "#30638e" },
];

export const short = (id) => (id ? id.slice(0, 8) : "–");
export const fmt = (v, digits = 3) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(digits) : String(v));
export const pct = (p) => `${Math.round((p || 0) * 100)}%`;
const pad = (n) => String(n).padStart(2, "0");
export const when = (ts) => {
  if (!ts) return "–";
  const d = new Date(ts); // shown in the browser's time zone
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
};
export const shortId = (id) => (id && UUID.test(id) ? short(id) : id || "–");
export const ago = (s) => (s === null || s === undefined ? "–" : s < 90 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`);
export const enc = encodeURIComponent;
