// The API client: fetch with the tab's key in the Authorization header, problem bodies as ApiError, downloads.
import { el } from "./dom.js";
import { state } from "./state.js";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

// Called with a message when the server answers 401 (the entry point signs out); set by onUnauthorized().
let unauthorized = () => {};
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export async function api(path, { method = "GET", body, raw = false } = {}) {
  // A "." or ".." segment (a route such as #/jobs/.) is resolved away by the browser, and the page of one
  // object was given its collection (a probe): it names no object.
  const dots = path.split("?")[0].split("/").find((s) => s === "." || s === "..");
  if (dots !== undefined) throw new ApiError(404, { detail: `"${dots}" names no object` });
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
    if (res.status === 401) unauthorized(`The server rejected the key: ${error.message}`);
    throw error;
  }
  return raw ? res : res.json();
}

export async function download(path, filename) {
  const res = await api(path, { raw: true });
  saveBlob(await res.blob(), filename);
}

export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
