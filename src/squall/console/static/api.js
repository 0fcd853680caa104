// The control API, called with the key the user signed in with. The key lives in this tab's
// sessionStorage only: never in a cookie (no request is authorized behind the user's back, so
// there is nothing to forge) and never in a URL (URLs end up in logs and history).

const KEY = "squall.key";
const TENANT = "squall.tenant";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  set key(v) { v ? sessionStorage.setItem(KEY, v) : sessionStorage.removeItem(KEY); },
  // An admin key may act on another tenant (?tenant=); empty means the key's own tenant.
  get tenant() { return sessionStorage.getItem(TENANT) || ""; },
  set tenant(v) { v ? sessionStorage.setItem(TENANT, v) : sessionStorage.removeItem(TENANT); },
  clear() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(TENANT); },
};

// Listeners told when the key is refused (revoked, expired): the app goes back to sign-in.
const unauthorized = [];
export function onUnauthorized(fn) { unauthorized.push(fn); }

function url(path, params) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
  }
  if (session.tenant && !u.searchParams.has("tenant")) u.searchParams.set("tenant", session.tenant);
  return u.pathname + u.search;
}

export async function call(method, path, { params, body, contentType, key, signal } = {}) {
  const headers = { authorization: `Bearer ${key || session.key}`, accept: "application/json" };
  if (body !== undefined) headers["content-type"] = contentType || "application/json";
  let resp;
  try {
    resp = await fetch(url(path, params), { method, headers, body, signal, cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network_error", "the platform did not answer: is it running?");
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    const e = new ApiError(resp.status, err.code || "http_" + resp.status,
                           err.message || resp.statusText || "request failed");
    if (resp.status === 401 && !key) unauthorized.forEach((fn) => fn(e));
    throw e;
  }
  return data;
}

export const get = (path, params, opts = {}) => call("GET", path, { ...opts, params });
export const post = (path, opts = {}) => call("POST", path, opts);

export const fnPath = (name, rest = "") => `/api/v1/functions/${encodeURIComponent(name)}${rest}`;
