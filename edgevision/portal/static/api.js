// The training API client: JSON calls, multipart uploads, the Training-Key prompt on 401.
//
// The key the user types is kept in localStorage and mirrored into the `edgevision-key` cookie, so
// that <img src> URLs of the API's image routes (which cannot carry a header) are authorised too.

export const TRAINING = "/customvision/v3.4-preview/training";
const KEY_NAME = "edgevision-key";

/** An API answer that is not 2xx; `message` is the API's own `message` when it sent one. */
export class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let keyPrompt = null; // set by the app: async () => key or null

export function setKeyPrompt(fn) {
  keyPrompt = fn;
}

let pendingPrompt = null;

/** One key prompt at a time: requests failing together wait for the same answer. */
function askOnce(reason) {
  if (!pendingPrompt) {
    pendingPrompt = keyPrompt(reason).then((typed) => {
      if (typed !== null) rememberKey(typed);
      return typed;
    }).finally(() => { pendingPrompt = null; });
  }
  return pendingPrompt;
}

export function storedKey() {
  try {
    return localStorage.getItem(KEY_NAME) || "";
  } catch {
    return "";
  }
}

export function rememberKey(key) {
  try {
    if (key) localStorage.setItem(KEY_NAME, key);
    else localStorage.removeItem(KEY_NAME);
  } catch {
    /* storage disabled: the cookie still works for this session */
  }
  const value = encodeURIComponent(key || "");
  document.cookie = key
    ? `${KEY_NAME}=${value}; path=/; SameSite=Strict`
    : `${KEY_NAME}=; path=/; max-age=0; SameSite=Strict`;
}

/** `?a=1&b=x` from an object, leaving out undefined/null/"" values; arrays are comma-joined. */
export function queryString(query) {
  const parts = [];
  for (const [name, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    const text = Array.isArray(value) ? value.join(",") : String(value);
    if (Array.isArray(value) && !value.length) continue;
    parts.push(`${encodeURIComponent(name)}=${encodeURIComponent(text)}`);
  }
  return parts.length ? `?${parts.join("&")}` : "";
}

async function failureFrom(response) {
  let code = `Http${response.status}`;
  let message = `${response.status} ${response.statusText || "error"}`;
  try {
    const body = await response.json();
    if (body && typeof body === "object") {
      const inner = body.error && typeof body.error === "object" ? body.error : body;
      if (inner.code) code = inner.code;
      if (inner.message) message = inner.message;
    }
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiFailure(response.status, code, message);
}

/**
 * One request. `path` is under the training prefix unless it starts with "/edgevision/" or "http".
 * Options: query (object), json (body), form (FormData), raw (return the Response).
 */
export async function request(method, path, options = {}) {
  const absolute = path.startsWith("/edgevision/") || path.startsWith("/customvision/") || path.startsWith("http");
  const url = (absolute ? path : TRAINING + path) + queryString(options.query);
  for (let attempt = 0; ; attempt++) {
    const headers = {};
    const key = storedKey();
    if (key) headers["Training-Key"] = key;
    let body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    } else if (options.form) {
      body = options.form;
    }
    let response;
    try {
      response = await fetch(url, { method, headers, body, credentials: "same-origin" });
    } catch (error) {
      throw new ApiFailure(0, "NetworkError", `the server did not answer (${error.message}); is it still running?`);
    }
    if (response.status === 401 && keyPrompt && attempt < 3) {
      const failure = await failureFrom(response);
      if (storedKey() !== key) continue; // another request got a new key meanwhile
      const typed = await askOnce(failure.message);
      if (typed === null) throw failure;
      continue;
    }
    if (!response.ok) throw await failureFrom(response);
    if (options.raw) return response;
    if (response.status === 204) return null;
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }
}

export const get = (path, query) => request("GET", path, { query });
export const post = (path, query, json) => request("POST", path, { query, json });
export const del = (path, query) => request("DELETE", path, { query });
export const patch = (path, json) => request("PATCH", path, { json });

/** POST image files as multipart `imageData` parts. */
export function upload(path, files, query) {
  const form = new FormData();
  for (const file of files) form.append("imageData", file, file.name || "image");
  return request("POST", path, { query, form });
}

/** Split a list into chunks of `size` (the API's batch limits). */
export function chunks(list, size) {
  const out = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

// ------------------------------------------------------------------ cached look-ups
let domainsPromise = null;

export function domains() {
  if (!domainsPromise) domainsPromise = get("/domains").catch((e) => { domainsPromise = null; throw e; });
  return domainsPromise;
}

/** The project's kind: "detection", "multilabel" or "multiclass", from its domain and classification type. */
export async function projectKind(project) {
  if (["multiclass", "multilabel", "detection"].includes(project.edgevisionType)) return project.edgevisionType;
  const settings = project.settings || {};
  let type = null;
  try {
    const found = (await domains()).find((d) => d.id === settings.domainId);
    type = found ? found.type : null;
  } catch {
    type = null;
  }
  if (type === "ObjectDetection") return "detection";
  return settings.classificationType === "Multilabel" ? "multilabel" : "multiclass";
}
