// The readiness banner: when no worker is alive (or the database or broker is down) the service still
// accepts requests, but they wait. The banner says so, with /readyz's own words for what is down.
import { $ } from "./dom.js";

const EVERY_MS = 5000; // /readyz touches the database and the broker: not on every poll
let last = 0;

export async function checkReadiness(force) {
  if (!force && Date.now() - last < EVERY_MS) return;
  last = Date.now();
  const banner = $("readiness");
  let text = "";
  try {
    const res = await fetch("/readyz", { cache: "no-store", credentials: "omit" });
    const body = await res.json();
    if (!body.ready) {
      const down = Object.entries(body.checks || {})
        .filter(([, v]) => v !== "ok")
        .map(([k, v]) => `${k}: ${v}`);
      text = `Not ready (${down.join("; ")}). Accepted deletion requests are kept and wait until this is fixed.`;
    }
  } catch (err) {
    text = `Cannot read the service's readiness (${err.message}).`;
  }
  banner.textContent = text;
  banner.hidden = !text;
}
