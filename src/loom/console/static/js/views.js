// The console's pages. Each view fills `main` and resolves when the page is ready; `ctx.signal` aborts its work
// when the user leaves the page.
import { ApiError, api, download, fileMeta, listAll, listAllBothEnds, stream, uploadFile, watch } from "./api.js";
import { badge, clear, copyable, errorBox, field, fmtBytes, h, link, table, timeEl } from "./dom.js";
import { RunView, renderMessage } from "./render.js";

const ACTIVE = new Set(["queued", "in_progress", "cancelling"]);
const enc = encodeURIComponent;

function title(text, ...extra) {
  document.title = `${text} · Loom console`;
  return h("div.page-head", {}, h("h1", {}, text), ...extra);
}

function metaText(md) {
  const entries = Object.entries(md || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "";
}

// A status line for actions (save, delete, upload): errors in OpenAI's words.
function statusLine() {
  const el = h("div.status-line", { role: "status", "aria-live": "polite" });
  return {
    el,
    ok: (text) => clear(el, h("span.ok", {}, text)),
    busy: (text) => clear(el, h("span.muted", {}, text)),
    fail: (err) => clear(el, errorBox(err)),
    clear: () => clear(el),
  };
}

function pager(page, go) {
  return h(
    "nav.pager",
    { "aria-label": "Pages" },
    h("button", { type: "button", disabled: !page.prev, onclick: () => go(page.prev) }, "← Newer"),
    h("button", { type: "button", disabled: !page.next, onclick: () => go(page.next) }, "Older →"),
  );
}

// ---------------------------------------------------------------- threads

export async function threadsView(main, _params, query, ctx) {
  const q = query.get("q") || "";
  const cursor = { after: query.get("after") || undefined, before: query.get("before") || undefined };
  const search = h("input", { type: "search", name: "q", value: q, placeholder: "thread id, metadata text, or key=value", "aria-label": "Search threads" });
  const form = h(
    "form.search",
    { role: "search", onsubmit: (e) => (e.preventDefault(), ctx.navigate(`/console/threads${search.value.trim() ? `?q=${enc(search.value.trim())}` : ""}`)) },
    search,
    h("button", { type: "submit" }, "Search"),
  );
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  clear(main, title("Threads"), form, body);
  const page = await api("/console/api/threads", { query: { limit: 50, q, ...cursor }, signal: ctx.signal });
  const rows = page.data.map((t) =>
    h(
      "tr",
      {},
      h("td", {}, link(`/console/threads/${t.id}`, t.id)),
      h("td", {}, timeEl(t.created_at)),
      h("td.num", {}, String(t.message_count)),
      h("td", {}, timeEl(t.last_activity_at)),
      h("td", {}, t.last_run ? badge(t.last_run.status) : h("span.muted", {}, "no runs")),
      h("td.meta", {}, metaText(t.metadata)),
    ),
  );
  const base = `/console/threads?${q ? `q=${enc(q)}&` : ""}`;
  const first = page.first_id;
  const last = page.last_id;
  const atStart = !cursor.after && !cursor.before;
  const nav = {
    prev: !atStart && first && (cursor.after || page.has_more) ? `${base}before=${enc(first)}` : null,
    next: last && (cursor.before || page.has_more) ? `${base}after=${enc(last)}` : null,
  };
  if (cursor.before && !page.has_more) nav.prev = null;
  clear(
    body,
    page.data.length
      ? table(["Thread", "Created", "Messages", "Last activity", "Last run", "Metadata"], rows, { id: "threads-table" })
      : h("p.empty", {}, q ? "No thread matches this search." : "No threads yet. Start one in the Playground."),
    pager(nav, (url) => ctx.navigate(url)),
  );
}

export async function threadView(main, [threadId], _query, ctx) {
  clear(main, title(threadId), h("p.muted", {}, "Loading…"));
  const stepsQuery = { "include[]": "step_details.tool_calls[*].file_search.results[*].content" };
  const runsP = listAll(`/v1/threads/${enc(threadId)}/runs`, {}, ctx.signal);
  // The newest runs' steps load with the messages, not after them.
  const earlySteps = runsP.then((rs) => new Map(rs.slice(-5).map((r) => [r.id, listAll(`/v1/threads/${enc(threadId)}/runs/${r.id}/steps`, stepsQuery, ctx.signal)])));
  earlySteps.catch(() => {});
  const [thread, messages, runs] = await Promise.all([
    api(`/v1/threads/${enc(threadId)}`, { signal: ctx.signal }),
    listAllBothEnds(`/v1/threads/${enc(threadId)}/messages`, ctx.signal),
    runsP,
  ]);
  const prefetched = await earlySteps;
  const msgList = h("div.messages", { id: "messages", "aria-label": "Messages" });
  const frag = document.createDocumentFragment();
  const rendered = new Map();
  for (const m of messages) {
    const el = renderMessage(m);
    rendered.set(m.id, [m, el]);
    frag.append(el);
  }
  msgList.append(frag);
  const runList = h("div.runs", { id: "runs" });
  const tr = thread.tool_resources || {};
  const resources = [
    ...((tr.code_interpreter && tr.code_interpreter.file_ids) || []).map((f) => ["code interpreter file", link(`/console/files/${f}`, f)]),
    ...((tr.file_search && tr.file_search.vector_store_ids) || []).map((v) => ["vector store", link(`/console/vector_stores/${v}`, v)]),
  ];
  clear(
    main,
    title(`Thread ${threadId}`, h("a.button", { href: `/console/playground?thread=${enc(threadId)}` }, "Continue in playground")),
    h(
      "dl.kv",
      {},
      h("dt", {}, "created"),
      h("dd", {}, timeEl(thread.created_at)),
      h("dt", {}, "messages"),
      h("dd", {}, String(messages.length)),
      h("dt", {}, "runs"),
      h("dd", {}, String(runs.length)),
      h("dt", {}, "metadata"),
      h("dd", {}, metaText(thread.metadata) || "—"),
      resources.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
    ),
    h("div.columns", {}, h("section", { "aria-label": "Messages" }, h("h2", {}, "Messages"), messages.length ? msgList : h("p.empty", {}, "No messages."), messages.length ? null : msgList), h("section", { "aria-label": "Runs" }, h("h2", {}, "Runs"), runs.length ? null : h("p.empty", {}, "No runs."), runList)),
  );
  const views = [];
  // Newest run first; the steps of the newest runs load at once, older ones when opened.
  const ordered = [...runs].reverse();
  const loads = [];
  ordered.forEach((run, i) => {
    const view = new RunView(run, { threadId, onMessage: (el) => msgList.append(el), onSubmitted: (v) => loadSteps(v) });
    const summaryBadge = badge(run.status);
    const details = h("details.run-box", { open: i < 5 }, h("summary", {}, summaryBadge, " ", run.id, " ", h("span.muted", {}, run.model)), view.el);
    runList.append(details);
    views.push(view);
    const loadSteps = async (v) => {
      const early = prefetched.get(v.run.id);
      prefetched.delete(v.run.id);
      v.setSteps(await (early || listAll(`/v1/threads/${enc(threadId)}/runs/${v.run.id}/steps`, stepsQuery, ctx.signal)));
    };
    if (i < 5) loads.push(loadSteps(view));
    else details.addEventListener("toggle", () => details.open && !view.steps.size && loadSteps(view).catch(() => {}), { once: false });
    if (ACTIVE.has(run.status)) {
      for (const [m, el] of rendered.values()) if (m.run_id === run.id) view.adopt(m, el);
      // Live: the run's own events through the console API (no polling).
      // The first events are the run so far (its snapshot: the text streamed before this page opened included).
      const onEvent = (n, d) => {
        view.apply(n, d);
        summaryBadge.className = badge(view.run.status).className;
        summaryBadge.textContent = view.run.status;
      };
      watch(`/console/api/threads/${enc(threadId)}/runs/${run.id}/events`, onEvent, ctx.signal).catch(() => {});
    }
  });
  await Promise.all(loads);
}

// ---------------------------------------------------------------- assistants

export async function assistantsView(main, _params, query, ctx) {
  clear(main, title("Assistants", h("a.button", { href: "/console/assistants/new" }, "New assistant")), h("p.muted", {}, "Loading…"));
  const page = await api("/v1/assistants", { query: { limit: 100, after: query.get("after") || undefined }, signal: ctx.signal });
  const rows = page.data.map((a) =>
    h(
      "tr",
      {},
      h("td", {}, link(`/console/assistants/${a.id}`, a.name || "(unnamed)")),
      h("td", {}, h("code", {}, a.id)),
      h("td", {}, a.model),
      h("td", {}, (a.tools || []).map((t) => (t.type === "function" ? t.function.name : t.type)).join(", ")),
      h("td", {}, timeEl(a.created_at)),
    ),
  );
  main.lastChild.replaceWith(
    page.data.length ? table(["Name", "Id", "Model", "Tools", "Created"], rows, { id: "assistants-table" }) : h("p.empty", {}, "No assistants yet."),
    pager({ prev: null, next: page.has_more ? `/console/assistants?after=${enc(page.last_id)}` : null }, (u) => ctx.navigate(u)),
  );
}

function parseJson(text, what, fallback) {
  if (!text.trim()) return fallback;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, { message: `${what} is not valid JSON: ${err.message}` });
  }
}

export async function assistantView(main, [assistantId], _query, ctx) {
  const isNew = assistantId === "new";
  clear(main, title(isNew ? "New assistant" : assistantId), h("p.muted", {}, "Loading…"));
  const [a, models, files, stores] = await Promise.all([
    isNew ? Promise.resolve({ model: "", tools: [], tool_resources: {}, metadata: {} }) : api(`/v1/assistants/${enc(assistantId)}`, { signal: ctx.signal }),
    api("/v1/models", { signal: ctx.signal }),
    api("/v1/files", { query: { purpose: "assistants", limit: 1000 }, signal: ctx.signal }),
    api("/v1/vector_stores", { query: { limit: 100 }, signal: ctx.signal }),
  ]);
  const types = new Set((a.tools || []).map((t) => t.type));
  const functions = (a.tools || []).filter((t) => t.type === "function").map((t) => t.function);
  const tr = a.tool_resources || {};
  const ciFiles = new Set((tr.code_interpreter && tr.code_interpreter.file_ids) || []);
  const fsStores = new Set((tr.file_search && tr.file_search.vector_store_ids) || []);
  const modelIds = models.data.map((m) => m.id);
  if (a.model && !modelIds.includes(a.model)) modelIds.unshift(a.model);
  const el = {
    name: h("input", { name: "name", value: a.name || "", maxlength: 256 }),
    description: h("input", { name: "description", value: a.description || "", maxlength: 512 }),
    instructions: h("textarea", { name: "instructions", rows: 6, value: a.instructions || "" }),
    model: h("select", { name: "model" }, modelIds.map((m) => h("option", { value: m, selected: m === a.model }, m))),
    ci: h("input", { type: "checkbox", name: "code_interpreter", checked: types.has("code_interpreter") }),
    fs: h("input", { type: "checkbox", name: "file_search", checked: types.has("file_search") }),
    functions: h("textarea", { name: "functions", rows: 5, value: functions.length ? JSON.stringify(functions, null, 2) : "", placeholder: '[{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}]' }),
    ciFiles: h("select", { name: "code_interpreter_files", multiple: true, size: 4 }, files.data.map((f) => h("option", { value: f.id, selected: ciFiles.has(f.id) }, `${f.filename} (${f.id})`))),
    fsStore: h("select", { name: "file_search_store" }, h("option", { value: "" }, "none"), stores.data.map((s) => h("option", { value: s.id, selected: fsStores.has(s.id) }, `${s.name || "(unnamed)"} (${s.id})`))),
    temperature: h("input", { type: "number", name: "temperature", min: 0, max: 2, step: 0.1, value: a.temperature ?? "" }),
    top_p: h("input", { type: "number", name: "top_p", min: 0, max: 1, step: 0.05, value: a.top_p ?? "" }),
    format: h("select", { name: "response_format" }, ["auto", "text", "json_object", "json_schema"].map((f) => h("option", { value: f, selected: f === (typeof a.response_format === "string" ? a.response_format : (a.response_format && a.response_format.type) || "auto") }, f))),
    schema: h("textarea", { name: "json_schema", rows: 4, value: a.response_format && a.response_format.json_schema ? JSON.stringify(a.response_format.json_schema, null, 2) : "", placeholder: '{"name": "answer", "schema": {"type": "object"}}' }),
    metadata: h("textarea", { name: "metadata", rows: 3, value: Object.keys(a.metadata || {}).length ? JSON.stringify(a.metadata, null, 2) : "", placeholder: '{"team": "support"}' }),
  };
  const status = statusLine();
  const build = () => {
    const tools = [];
    if (el.ci.checked) tools.push({ type: "code_interpreter" });
    if (el.fs.checked) tools.push({ type: "file_search" });
    for (const f of parseJson(el.functions.value, "Functions", [])) tools.push({ type: "function", function: f });
    const fmt = el.format.value;
    const body = {
      name: el.name.value || null,
      description: el.description.value || null,
      instructions: el.instructions.value || null,
      model: el.model.value,
      tools,
      tool_resources: {
        code_interpreter: { file_ids: [...el.ciFiles.selectedOptions].map((o) => o.value) },
        file_search: { vector_store_ids: el.fsStore.value ? [el.fsStore.value] : [] },
      },
      metadata: parseJson(el.metadata.value, "Metadata", {}),
      response_format: fmt === "json_schema" ? { type: "json_schema", json_schema: parseJson(el.schema.value, "The JSON schema", {}) } : fmt === "auto" ? "auto" : { type: fmt },
    };
    if (el.temperature.value !== "") body.temperature = Number(el.temperature.value);
    if (el.top_p.value !== "") body.top_p = Number(el.top_p.value);
    return body;
  };
  const form = h(
    "form.editor",
    {
      id: "assistant-form",
      onsubmit: async (e) => {
        e.preventDefault();
        status.busy("Saving…");
        try {
          const saved = await api(isNew ? "/v1/assistants" : `/v1/assistants/${enc(assistantId)}`, { method: "POST", body: build() });
          if (isNew) ctx.navigate(`/console/assistants/${saved.id}`);
          else status.ok(`Saved ${saved.id}.`);
        } catch (err) {
          status.fail(err);
        }
      },
    },
    field("Name", el.name),
    field("Description", el.description),
    field("Instructions", el.instructions),
    field("Model", el.model),
    h("fieldset", {}, h("legend", {}, "Tools"), h("label.check", {}, el.ci, " code interpreter"), h("label.check", {}, el.fs, " file search"), field("Functions (JSON array of function definitions)", el.functions)),
    h("fieldset", {}, h("legend", {}, "Tool resources"), field("Code interpreter files", el.ciFiles, "Files with purpose assistants; Ctrl/⌘-click for several."), field("File search vector store", el.fsStore)),
    h("div.two", {}, field("Temperature", el.temperature), field("Top p", el.top_p)),
    field("Response format", el.format),
    field("JSON schema (for json_schema)", el.schema),
    field("Metadata (JSON object)", el.metadata),
    h(
      "div.actions",
      {},
      h("button.primary", { type: "submit" }, isNew ? "Create" : "Save"),
      isNew
        ? null
        : h(
            "button.danger",
            {
              type: "button",
              onclick: async () => {
                if (!window.confirm(`Delete assistant ${assistantId}?`)) return;
                try {
                  await api(`/v1/assistants/${enc(assistantId)}`, { method: "DELETE" });
                  ctx.navigate("/console/assistants");
                } catch (err) {
                  status.fail(err);
                }
              },
            },
            "Delete",
          ),
      isNew ? null : h("a.button", { href: `/console/playground?assistant=${enc(assistantId)}` }, "Try in playground"),
    ),
    status.el,
  );
  clear(main, title(isNew ? "New assistant" : a.name || assistantId, isNew ? null : copyable(assistantId)), form);
}

// ---------------------------------------------------------------- playground

export async function playgroundView(main, _params, query, ctx) {
  clear(main, title("Playground"), h("p.muted", {}, "Loading…"));
  const assistants = await api("/v1/assistants", { query: { limit: 100 }, signal: ctx.signal });
  let threadId = query.get("thread") || null;
  const wanted = query.get("assistant");
  const pick = h("select", { name: "assistant" }, assistants.data.map((a) => h("option", { value: a.id, selected: a.id === wanted }, `${a.name || "(unnamed)"} — ${a.model} (${a.id})`)));
  const threadLabel = h("span", {});
  const chat = h("div.chat", { id: "chat", "aria-live": "off" });
  // Follow the answer as it grows (by scrolling the chat: nothing moves on the page), unless the user scrolled up
  // to read. Whether to follow is decided where the user left the scroll, not after the growth: a burst of
  // pieces may add more than a screen at once.
  let follow = true;
  chat.addEventListener("scroll", () => (follow = chat.scrollHeight - chat.scrollTop - chat.clientHeight < 24), { passive: true });
  new MutationObserver(() => {
    if (follow) chat.scrollTop = chat.scrollHeight;
  }).observe(chat, { childList: true, subtree: true, characterData: true });
  const input = h("textarea", { name: "message", rows: 3, placeholder: "Message… (Ctrl+Enter sends)", "aria-label": "Message" });
  const fileInput = h("input", { type: "file", multiple: true, "aria-label": "Attach files" });
  const attachments = h("ul.chips", { "aria-label": "Attachments" });
  const pending = [];
  const status = statusLine();
  const send = h("button.primary", { type: "submit" }, "Send");
  const cancel = h("button", { type: "button", hidden: true }, "Cancel run");
  let current = null;

  const showThread = () => clear(threadLabel, threadId ? ["thread ", link(`/console/threads/${threadId}`, threadId)] : "new thread");
  const addRun = (run) => {
    const view = new RunView(run, { threadId, onMessage: (el) => chat.append(el), onSubmitted: () => finished(view) });
    chat.append(h("details.run-box.inline", { open: true }, h("summary", {}, "run ", run.id), view.el));
    current = view;
    cancel.hidden = false;
    return view;
  };
  const finished = (view) => {
    if (view.run.status !== "requires_action") cancel.hidden = true;
    send.disabled = false;
  };
  const onEvent = (name, data) => {
    if (name === "thread.created") {
      threadId = data.id;
      showThread();
      return;
    }
    if (name === "thread.run.created") {
      addRun(data);
      return;
    }
    if (current) current.apply(name, data);
  };
  cancel.addEventListener("click", async () => {
    if (!current) return;
    try {
      await api(`/v1/threads/${threadId}/runs/${current.run.id}/cancel`, { method: "POST" });
    } catch (err) {
      status.fail(err);
    }
  });
  fileInput.addEventListener("change", async () => {
    for (const file of [...fileInput.files]) {
      const bar = h("progress", { max: 1, value: 0, "aria-label": `Uploading ${file.name}` });
      const fs = h("input", { type: "checkbox", checked: true, "aria-label": "file search" });
      const ci = h("input", { type: "checkbox", "aria-label": "code interpreter" });
      const chip = h("li.chip", {}, file.name, " ", bar);
      attachments.append(chip);
      try {
        const uploaded = await uploadFile(file, "assistants", (p) => (bar.value = p));
        bar.replaceWith(h("label", {}, fs, " search"), h("label", {}, ci, " code"), h("button.link", { type: "button", "aria-label": `Remove ${file.name}`, onclick: () => (chip.remove(), pending.splice(pending.indexOf(entry), 1)) }, "×"));
        const entry = { id: uploaded.id, fs, ci };
        pending.push(entry);
      } catch (err) {
        chip.append(errorBox(err));
      }
    }
    fileInput.value = "";
  });
  const form = h(
    "form.composer",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        const text = input.value.trim();
        if (!text || !pick.value) return;
        send.disabled = true;
        status.clear();
        const message = {
          role: "user",
          content: text,
          attachments: pending.map((p) => ({ file_id: p.id, tools: [...(p.fs.checked ? [{ type: "file_search" }] : []), ...(p.ci.checked ? [{ type: "code_interpreter" }] : [])] })).filter((a) => a.tools.length),
        };
        try {
          if (!threadId) {
            const now = Math.floor(Date.now() / 1000);
            chat.append(renderMessage({ id: "", role: "user", created_at: now, content: [{ type: "text", text: { value: text, annotations: [] } }], attachments: message.attachments }));
            await stream("/v1/threads/runs", { assistant_id: pick.value, thread: { messages: [message] } }, onEvent, ctx.signal);
          } else {
            const created = await api(`/v1/threads/${threadId}/messages`, { method: "POST", body: message });
            chat.append(renderMessage(created));
            await stream(`/v1/threads/${threadId}/runs`, { assistant_id: pick.value }, onEvent, ctx.signal);
          }
          input.value = "";
          pending.length = 0;
          clear(attachments);
        } catch (err) {
          status.fail(err);
        } finally {
          if (current) finished(current);
          else send.disabled = false;
          // Unless the user went elsewhere meanwhile, the focus goes where the next keystroke belongs: the
          // function outputs the run waits for, else the message box (the Send button was disabled under it).
          const active = document.activeElement;
          if (!active || active === document.body || active === send) {
            const outputs = current && current.run.status === "requires_action" ? chat.querySelector("form.tool-outputs textarea") : null;
            (outputs || input).focus();
          }
        }
      },
    },
    input,
    h("div.row", {}, h("label.button", {}, "Attach files", fileInput), attachments, h("span.spacer"), cancel, send),
    status.el,
  );
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  const newThread = h("button", { type: "button", onclick: () => ctx.navigate("/console/playground" + (pick.value ? `?assistant=${enc(pick.value)}` : "")) }, "New thread");
  showThread();
  clear(
    main,
    title("Playground"),
    assistants.data.length ? null : h("p.empty", {}, "Create an assistant first: ", link("/console/assistants/new", "new assistant"), "."),
    h("div.row.bar", {}, field("Assistant", pick), h("div", {}, threadLabel, " ", newThread)),
    chat,
    form,
  );
  if (threadId) {
    const messages = await listAll(`/v1/threads/${enc(threadId)}/messages`, {}, ctx.signal);
    for (const m of messages) chat.append(renderMessage(m));
    const runs = await api(`/v1/threads/${enc(threadId)}/runs`, { query: { limit: 1 }, signal: ctx.signal });
    const last = runs.data[0];
    if (last && last.status === "requires_action") addRun(last);
  }
}

// ---------------------------------------------------------------- files

const PURPOSES = ["assistants", "assistants_output", "vision", "batch", "batch_output", "fine-tune", "fine-tune-results", "user_data"];

function uploader(purposeDefault, onUploaded) {
  const input = h("input", { type: "file", multiple: true, "aria-label": "File to upload" });
  const purpose = h("select", { name: "purpose", "aria-label": "Purpose" }, PURPOSES.map((p) => h("option", { value: p, selected: p === purposeDefault }, p)));
  const progress = h("div.uploads");
  const form = h(
    "form.upload",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        for (const file of [...input.files]) {
          const bar = h("progress", { max: 1, value: 0 });
          const row = h("div", {}, file.name, " ", bar);
          progress.append(row);
          try {
            const f = await uploadFile(file, purpose.value, (p) => (bar.value = p));
            bar.replaceWith(h("span.ok", {}, `uploaded ${f.id}`));
            await onUploaded(f);
          } catch (err) {
            row.append(errorBox(err));
          }
        }
        input.value = "";
      },
    },
    input,
    purpose,
    h("button.primary", { type: "submit" }, "Upload"),
    progress,
  );
  return form;
}

function fileRow(f, after) {
  const status = statusLine();
  return h(
    "tr",
    { dataset: { id: f.id } },
    h("td", {}, link(`/console/files/${f.id}`, f.filename)),
    h("td", {}, h("code", {}, f.id)),
    h("td", {}, f.purpose),
    h("td.num", {}, fmtBytes(f.bytes)),
    h("td", {}, timeEl(f.created_at)),
    h(
      "td.actions",
      {},
      h("button", { type: "button", onclick: () => download(f.id, f.filename).catch(status.fail) }, "Download"),
      " ",
      h(
        "button.danger",
        {
          type: "button",
          onclick: async () => {
            if (!window.confirm(`Delete ${f.filename}?`)) return;
            try {
              await api(`/v1/files/${enc(f.id)}`, { method: "DELETE" });
              await after();
            } catch (err) {
              status.fail(err);
            }
          },
        },
        "Delete",
      ),
      status.el,
    ),
  );
}

export async function filesView(main, _params, query, ctx) {
  const purpose = query.get("purpose") || "";
  const filter = h(
    "select",
    { name: "purpose-filter", "aria-label": "Purpose filter", onchange: (e) => ctx.navigate(`/console/files${e.target.value ? `?purpose=${enc(e.target.value)}` : ""}`) },
    h("option", { value: "" }, "all purposes"),
    PURPOSES.map((p) => h("option", { value: p, selected: p === purpose }, p)),
  );
  const list = h("div", {}, h("p.muted", {}, "Loading…"));
  const refresh = async () => {
    const page = await api("/v1/files", { query: { purpose: purpose || undefined, limit: 200, after: query.get("after") || undefined }, signal: ctx.signal });
    clear(
      list,
      page.data.length ? table(["File", "Id", "Purpose", "Size", "Created", ""], page.data.map((f) => fileRow(f, refresh)), { id: "files-table" }) : h("p.empty", {}, "No files."),
      pager({ prev: null, next: page.has_more ? `/console/files?${purpose ? `purpose=${enc(purpose)}&` : ""}after=${enc(page.last_id)}` : null }, (u) => ctx.navigate(u)),
    );
  };
  clear(main, title("Files", filter), uploader(purpose || "assistants", refresh), list);
  await refresh();
}

export async function fileView(main, [fileId], _query, ctx) {
  const f = await api(`/v1/files/${enc(fileId)}`, { signal: ctx.signal });
  const status = statusLine();
  clear(
    main,
    title(f.filename, copyable(f.id)),
    h("dl.kv", {}, [["purpose", f.purpose], ["size", fmtBytes(f.bytes)], ["created", timeEl(f.created_at)], ["expires", timeEl(f.expires_at)], ["status", f.status || "—"]].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h(
      "div.actions",
      {},
      h("button.primary", { type: "button", onclick: () => download(f.id, f.filename).catch(status.fail) }, "Download"),
      h(
        "button.danger",
        {
          type: "button",
          onclick: async () => {
            if (!window.confirm(`Delete ${f.filename}?`)) return;
            try {
              await api(`/v1/files/${enc(f.id)}`, { method: "DELETE" });
              ctx.navigate("/console/files");
            } catch (err) {
              status.fail(err);
            }
          },
        },
        "Delete",
      ),
    ),
    status.el,
  );
}

// ---------------------------------------------------------------- vector stores

function counts(c) {
  if (!c) return "—";
  return `${c.completed}/${c.total} completed` + (c.in_progress ? `, ${c.in_progress} in progress` : "") + (c.failed ? `, ${c.failed} failed` : "") + (c.cancelled ? `, ${c.cancelled} cancelled` : "");
}

export async function storesView(main, _params, query, ctx) {
  const name = h("input", { name: "name", placeholder: "name", "aria-label": "Name" });
  const days = h("input", { type: "number", name: "days", min: 1, max: 365, placeholder: "expires after days (optional)", "aria-label": "Expires after days" });
  const status = statusLine();
  const create = h(
    "form.inline-form",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          const body = { name: name.value || undefined };
          if (days.value) body.expires_after = { anchor: "last_active_at", days: Number(days.value) };
          const vs = await api("/v1/vector_stores", { method: "POST", body });
          ctx.navigate(`/console/vector_stores/${vs.id}`);
        } catch (err) {
          status.fail(err);
        }
      },
    },
    name,
    days,
    h("button.primary", { type: "submit" }, "Create vector store"),
    status.el,
  );
  clear(main, title("Vector stores"), create, h("p.muted", {}, "Loading…"));
  const page = await api("/v1/vector_stores", { query: { limit: 100, after: query.get("after") || undefined }, signal: ctx.signal });
  const rows = page.data.map((v) =>
    h(
      "tr",
      {},
      h("td", {}, link(`/console/vector_stores/${v.id}`, v.name || "(unnamed)")),
      h("td", {}, h("code", {}, v.id)),
      h("td", {}, badge(v.status)),
      h("td", {}, counts(v.file_counts)),
      h("td.num", {}, fmtBytes(v.usage_bytes)),
      h("td", {}, timeEl(v.expires_at)),
      h("td", {}, timeEl(v.created_at)),
    ),
  );
  main.lastChild.replaceWith(
    page.data.length ? table(["Name", "Id", "Status", "Files", "Usage", "Expires", "Created"], rows, { id: "stores-table" }) : h("p.empty", {}, "No vector stores."),
    pager({ prev: null, next: page.has_more ? `/console/vector_stores?after=${enc(page.last_id)}` : null }, (u) => ctx.navigate(u)),
  );
}

export async function storeView(main, [storeId], _query, ctx) {
  const base = `/v1/vector_stores/${enc(storeId)}`;
  const head = h("div");
  const filesBox = h("div", { id: "store-files" });
  const status = statusLine();
  let timer = null;
  ctx.signal.addEventListener("abort", () => clearTimeout(timer));

  const refresh = async () => {
    clearTimeout(timer);
    const [vs, files] = await Promise.all([api(base, { signal: ctx.signal }), listAll(`${base}/files`, {}, ctx.signal)]);
    clear(
      head,
      h(
        "dl.kv",
        {},
        [["status", badge(vs.status)], ["files", counts(vs.file_counts)], ["usage", fmtBytes(vs.usage_bytes)], ["created", timeEl(vs.created_at)], ["last active", timeEl(vs.last_active_at)], ["expires", vs.expires_after ? [timeEl(vs.expires_at), ` (${vs.expires_after.days} days after last activity)`] : "never"]].map(
          ([k, v]) => [h("dt", {}, k), h("dd", {}, v)],
        ),
      ),
    );
    const rows = files.map((f) => {
      const nameCell = h("td", {}, link(`/console/files/${f.id}`, f.id));
      fileMeta(f.id).then((m) => (nameCell.firstChild.textContent = m.filename), () => {});
      return h(
        "tr",
        { dataset: { id: f.id, status: f.status } },
        nameCell,
        h("td", {}, badge(f.status)),
        h("td", {}, f.last_error ? h("span.error-text", {}, `${f.last_error.code}: ${f.last_error.message}`) : "—"),
        h("td.num", {}, fmtBytes(f.usage_bytes)),
        h("td", {}, timeEl(f.created_at)),
        h(
          "td",
          {},
          h(
            "button.danger",
            {
              type: "button",
              onclick: async () => {
                try {
                  await api(`${base}/files/${enc(f.id)}`, { method: "DELETE" });
                  await refresh();
                } catch (err) {
                  status.fail(err);
                }
              },
            },
            "Remove",
          ),
        ),
      );
    });
    clear(filesBox, files.length ? table(["File", "Status", "Error", "Usage", "Added", ""], rows, { id: "store-files-table" }) : h("p.empty", {}, "No files in this store."));
    // Ingestion has no event stream in /v1: while files are in progress, look again shortly.
    if (files.some((f) => f.status === "in_progress") && !ctx.signal.aborted) timer = setTimeout(() => refresh().catch(() => {}), 700);
    return vs;
  };

  const add = async (fileId) => {
    await api(`${base}/files`, { method: "POST", body: { file_id: fileId } });
    await refresh();
  };
  const existing = h("select", { name: "existing", "aria-label": "Existing file" });
  const addForm = h(
    "form.inline-form",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        if (!existing.value) return;
        try {
          await add(existing.value);
          status.ok(`Added ${existing.value}.`);
        } catch (err) {
          status.fail(err);
        }
      },
    },
    existing,
    h("button", { type: "submit" }, "Add file"),
  );
  const q = h("input", { type: "search", name: "query", placeholder: "Search this store", "aria-label": "Search query" });
  const max = h("input", { type: "number", name: "max", min: 1, max: 50, value: 10, "aria-label": "Maximum results" });
  const results = h("div", { id: "search-results" });
  const searchForm = h(
    "form.search",
    {
      role: "search",
      onsubmit: async (e) => {
        e.preventDefault();
        clear(results, h("p.muted", {}, "Searching…"));
        try {
          const page = await api(`${base}/search`, { method: "POST", body: { query: q.value, max_num_results: Number(max.value) || 10 } });
          clear(
            results,
            page.data.length
              ? h(
                  "ol.results",
                  {},
                  page.data.map((r) => h("li", {}, h("span.score", { title: "score" }, Number(r.score).toFixed(3)), " ", link(`/console/files/${r.file_id}`, r.filename || r.file_id), (r.content || []).map((c) => h("blockquote", {}, c.text)))),
                )
              : h("p.empty", {}, "No results."),
          );
        } catch (err) {
          clear(results, errorBox(err));
        }
      },
    },
    q,
    max,
    h("button", { type: "submit" }, "Search"),
  );
  const vs = await refresh();
  const files = await api("/v1/files", { query: { purpose: "assistants", limit: 1000 }, signal: ctx.signal });
  clear(existing, h("option", { value: "" }, "choose a file…"), files.data.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)));
  clear(
    main,
    title(vs.name || storeId, copyable(storeId)),
    head,
    h("h2", {}, "Files"),
    h("div.row", {}, addForm, uploader("assistants", (f) => add(f.id))),
    status.el,
    filesBox,
    h("h2", {}, "Search"),
    searchForm,
    results,
    h(
      "div.actions",
      {},
      h(
        "button.danger",
        {
          type: "button",
          onclick: async () => {
            if (!window.confirm(`Delete vector store ${storeId}?`)) return;
            try {
              await api(base, { method: "DELETE" });
              ctx.navigate("/console/vector_stores");
            } catch (err) {
              status.fail(err);
            }
          },
        },
        "Delete vector store",
      ),
    ),
  );
}
