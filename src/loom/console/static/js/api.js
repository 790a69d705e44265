// The console's only way to the server: /v1 and /console/api with the key kept in this tab's sessionStorage.
const KEY = "loom.console.key";
// In open mode (no keys configured, loopback) any bearer token is accepted: the console sends this one.
export const OPEN_MODE_TOKEN = "loom-console-open-mode";

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `The server answered HTTP ${status}.`);
    this.status = status;
    this.error = error || null;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${getKey() || ""}`, "OpenAI-Beta": "assistants=v2", ...extra };
}

// A failed answer becomes an ApiError with OpenAI's message; a 401 also signs the user out.
async function check(resp) {
  if (resp.ok) return resp;
  let error = null;
  try {
    error = (await resp.json()).error || null;
  } catch {
    error = null;
  }
  if (resp.status === 401) {
    clearKey();
    window.dispatchEvent(new CustomEvent("loom:unauthorized", { detail: error && error.message }));
  }
  throw new ApiError(resp.status, error);
}

export function withQuery(path, query) {
  if (!query) return path;
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (Array.isArray(v)) v.forEach((x) => qs.append(k, x));
    else if (v !== undefined && v !== null && v !== "") qs.append(k, String(v));
  }
  const s = qs.toString();
  return s ? `${path}${path.includes("?") ? "&" : "?"}${s}` : path;
}

export async function api(path, { method = "GET", body, query, signal } = {}) {
  const init = { method, headers: headers(body !== undefined ? { "Content-Type": "application/json" } : {}), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const resp = await check(await fetch(withQuery(path, query), init));
  return resp.json();
}

// Every object of a /v1 list, page after page (ascending unless told).
export async function listAll(path, query = {}, signal) {
  const out = [];
  let after;
  for (;;) {
    const page = await api(path, { query: { limit: 100, order: "asc", ...query, after }, signal });
    out.push(...page.data);
    if (!page.has_more || !page.data.length) return out;
    after = page.last_id;
  }
}

// Every object of a long /v1 list in ascending order, read from both ends at once (two cursors that meet in
// the middle): half the round trips of one cursor, for the thread page's messages.
export async function listAllBothEnds(path, signal) {
  const seen = new Set();
  const head = [];
  const tail = [];
  let after;
  let from_end;
  for (;;) {
    const [up, down] = await Promise.all([
      api(path, { query: { limit: 100, order: "asc", after }, signal }),
      api(path, { query: { limit: 100, order: "desc", after: from_end }, signal }),
    ]);
    let met = false;
    for (const o of up.data) {
      if (seen.has(o.id)) met = true;
      else (seen.add(o.id), head.push(o));
    }
    for (const o of down.data) {
      if (seen.has(o.id)) met = true;
      else (seen.add(o.id), tail.push(o));
    }
    if (met || !up.has_more || !down.has_more || !up.data.length || !down.data.length) break;
    after = up.last_id;
    from_end = down.last_id;
  }
  // `head` is a prefix and `tail` a suffix (newest first) of the list; where they met, nothing is missing.
  return head.concat(tail.reverse());
}

// Server-sent events of a response, one callback per event, until `done` (or the stream ends).
async function readEvents(resp, onEvent) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      if (name === "done") return;
      const payload = JSON.parse(data.join("\n"));
      if (name === "error") throw new ApiError(500, payload.error || payload);
      onEvent(name, payload);
    }
  }
}

// POST with `stream: true` and hand each event to `onEvent` (token by token, as the server sends them).
export async function stream(path, body, onEvent, signal) {
  const resp = await check(
    await fetch(path, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ ...body, stream: true }),
      signal,
    }),
  );
  await readEvents(resp, onEvent);
}

// GET an event stream (the console API's view of a run another client started).
export async function watch(path, onEvent, signal) {
  const resp = await check(await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal }));
  await readEvents(resp, onEvent);
}

// Upload a file to /v1/files, reporting progress (0…1): XMLHttpRequest, since fetch has no upload progress.
export function uploadFile(file, purpose, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.setRequestHeader("Authorization", `Bearer ${getKey() || ""}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total);
    };
    xhr.onerror = () => reject(new ApiError(0, { message: "The upload failed: the server could not be reached." }));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        if (onProgress) onProgress(1);
        resolve(body);
        return;
      }
      const error = body && body.error;
      if (xhr.status === 401) {
        clearKey();
        window.dispatchEvent(new CustomEvent("loom:unauthorized", { detail: error && error.message }));
      }
      reject(new ApiError(xhr.status, error));
    };
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

// A file's bytes as a blob: URL (images in messages and code interpreter outputs), cached per file.
const blobUrls = new Map();
export function fileUrl(fileId) {
  if (!blobUrls.has(fileId)) {
    const p = fetch(`/v1/files/${encodeURIComponent(fileId)}/content`, { headers: headers() })
      .then(check)
      .then((r) => r.blob())
      .then((b) => URL.createObjectURL(b));
    p.catch(() => blobUrls.delete(fileId));
    blobUrls.set(fileId, p);
  }
  return blobUrls.get(fileId);
}

export async function download(fileId, filename) {
  const resp = await check(await fetch(`/v1/files/${encodeURIComponent(fileId)}/content`, { headers: headers() }));
  const url = URL.createObjectURL(await resp.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = filename || fileId;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// File names by id, fetched once (citations, vector store files, pickers).
const fileInfo = new Map();
export function fileMeta(fileId) {
  if (!fileInfo.has(fileId)) {
    const p = api(`/v1/files/${encodeURIComponent(fileId)}`);
    p.catch(() => fileInfo.delete(fileId));
    fileInfo.set(fileId, p);
  }
  return fileInfo.get(fileId);
}
