// The console's shell: sign-in, navigation (History API, deep links), and the page lifecycle.
import { ApiError, OPEN_MODE_TOKEN, api, clearKey, getKey, setKey } from "./api.js";
import { clear, errorBox, field, h } from "./dom.js";
import * as views from "./views.js";

const main = document.getElementById("main");
const top = document.getElementById("top");

const ROUTES = [
  [/^\/console\/threads\/?$/, views.threadsView],
  [/^\/console\/threads\/([^/]+)$/, views.threadView],
  [/^\/console\/assistants\/?$/, views.assistantsView],
  [/^\/console\/assistants\/([^/]+)$/, views.assistantView],
  [/^\/console\/playground\/?$/, views.playgroundView],
  [/^\/console\/files\/?$/, views.filesView],
  [/^\/console\/files\/([^/]+)$/, views.fileView],
  [/^\/console\/vector_stores\/?$/, views.storesView],
  [/^\/console\/vector_stores\/([^/]+)$/, views.storeView],
];

let controller = null;
let session = null;
let navigated = false;

function navigate(url, { replace = false } = {}) {
  navigated = true;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route();
}

// Keyboard users keep their place: when the page they left took the focus with it (a link in a list, the
// sign-in form), the new page's content takes it, so the next Tab goes on from there, not from the top.
function settleFocus() {
  const active = document.activeElement;
  if (navigated && (!active || active === document.body)) main.focus({ preventScroll: true });
}

function setReady(state) {
  main.dataset.state = state;
}

// Sign in with the key of the form (or, on a server with no keys, directly).
async function trySession(key) {
  const resp = await fetch("/console/api/me", { headers: { Authorization: `Bearer ${key}` } });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, body && body.error);
  return body;
}

async function signInView(query, notice) {
  top.hidden = true;
  document.title = "Sign in · Loom console";
  const next = query.get("next") || "/console/threads";
  const safeNext = next.startsWith("/console/") ? next : "/console/threads";
  try {
    const open = await trySession(OPEN_MODE_TOKEN);
    if (open.open) {
      setKey(OPEN_MODE_TOKEN);
      session = open;
      navigate(safeNext, { replace: true });
      return;
    }
  } catch {
    // Keys are configured: ask for one.
  }
  const key = h("input", { type: "password", name: "key", autocomplete: "off", required: true, placeholder: "sk-…" });
  const status = h("div", { role: "status" }, notice ? errorBox(notice) : null);
  const form = h(
    "form.signin",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        clear(status, h("span.muted", {}, "Signing in…"));
        try {
          session = await trySession(key.value.trim());
          setKey(key.value.trim());
          navigate(safeNext, { replace: true });
        } catch (err) {
          clear(status, errorBox(err));
        }
      },
    },
    h("h1", {}, "Loom console"),
    h("p.muted", {}, "Sign in with an API key. The key stays in this browser tab only."),
    field("API key", key),
    h("button.primary", { type: "submit" }, "Sign in"),
    status,
  );
  clear(main, form);
  key.focus();
  setReady("ready");
}

async function route(notice) {
  if (controller) controller.abort();
  controller = new AbortController();
  const ctx = { signal: controller.signal, navigate };
  const url = new URL(location.href);
  const path = url.pathname.replace(/\/+$/, "") || "/console";
  setReady("loading");
  if (path === "/console/signin") {
    await signInView(url.searchParams, notice);
    return;
  }
  if (!getKey()) {
    navigate(`/console/signin?next=${encodeURIComponent(url.pathname + url.search)}`, { replace: true });
    return;
  }
  if (path === "/console") {
    navigate("/console/threads", { replace: true });
    return;
  }
  top.hidden = false;
  for (const a of top.querySelectorAll("nav a")) {
    if (path.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    if (!session) session = await api("/console/api/me", { signal: ctx.signal });
    document.getElementById("project").textContent = session.open ? "open mode" : `project ${session.project}`;
    const match = ROUTES.map(([re, view]) => [path.match(re), view]).find(([m]) => m);
    if (!match) {
      clear(main, h("h1", {}, "Not found"), h("p", {}, "There is no console page at this address."));
    } else {
      const [m, view] = match;
      await view(main, m.slice(1).map(decodeURIComponent), url.searchParams, ctx);
    }
    if (!ctx.signal.aborted) {
      settleFocus();
      setReady("ready");
    }
  } catch (err) {
    if (ctx.signal.aborted || (err && err.name === "AbortError")) return;
    if (err instanceof ApiError && err.status === 401) return; // the unauthorized handler signs out
    clear(main, errorBox(err));
    settleFocus();
    setReady("error");
  }
}

// An expired or revoked key (any 401) returns to sign-in, then back to this page.
window.addEventListener("loom:unauthorized", (e) => {
  session = null;
  const here = location.pathname + location.search;
  history.replaceState(null, "", `/console/signin?next=${encodeURIComponent(here)}`);
  route(e.detail || "Your key is no longer valid: sign in again.");
});

document.getElementById("signout").addEventListener("click", () => {
  clearKey();
  session = null;
  navigate("/console/signin");
});

// Links inside the console navigate without reloading; anchors within a page scroll.
document.addEventListener("click", (e) => {
  const a = e.target.closest("a[href]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey || a.target || a.hasAttribute("download")) return;
  const href = a.getAttribute("href");
  if (href.startsWith("#")) {
    const target = document.getElementById(href.slice(1));
    if (target) {
      e.preventDefault();
      const box = target.closest("details");
      if (box) box.open = true;
      // The focus goes where the link points (the skip link: past the navigation), as a plain anchor would.
      if (!target.matches("a[href], button, input, select, textarea, summary, [tabindex]")) target.setAttribute("tabindex", "-1");
      target.focus({ preventScroll: true });
      target.scrollIntoView({ block: "center" });
      target.classList.add("flash");
      setTimeout(() => target.classList.remove("flash"), 1200);
    }
    return;
  }
  if (!href.startsWith("/console/")) return;
  e.preventDefault();
  navigate(href);
});

window.addEventListener("popstate", () => route());
route();
