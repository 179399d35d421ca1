// The tab's shared state (key, scopes held, page shown, poll timer) and which scope each section needs.

export const KEY_STORAGE = "unlearn.apiKey";
// Which scope each section needs (admin implies every scope). Requests accept any reading scope.
const SECTION_SCOPE = { models: "jobs:read", jobs: "jobs:read", audit: "audit:read", requests: null };

export const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  access: {}, // scope -> {ok, reason, required}
  page: null, // the page being shown
  token: 0, // bumps on every navigation, so a late answer for an old page is dropped
  timer: null,
  certificates: new Map(), // request id -> signed certificate (fetched once per request)
};

// The access record that keeps this key out of a section, or null when the key may see it.
export function denied(section) {
  const scope = SECTION_SCOPE[section];
  const access = scope && state.access[scope];
  return access && !access.ok ? access : null;
}
