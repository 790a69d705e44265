// Messages, runs and run steps: rendered from /v1 objects, and kept live from a run's events.
import { fileMeta, fileUrl, stream } from "./api.js";
import { badge, clear, copyable, errorBox, fmtDuration, h, pretty, timeEl } from "./dom.js";

function fileLink(fileId, text) {
  const a = h("a", { href: `/console/files/${encodeURIComponent(fileId)}`, class: "file-link" }, text || fileId);
  if (!text) fileMeta(fileId).then((f) => (a.textContent = f.filename), () => {});
  return a;
}

function image(fileId, alt) {
  const img = h("img.inline", { alt: alt || `Image ${fileId}`, loading: "lazy", dataset: { fileId } });
  fileUrl(fileId).then((url) => (img.src = url), () => img.replaceWith(h("span.muted", {}, `[image ${fileId} unavailable]`)));
  return img;
}

// Text with its annotations: each citation becomes a numbered link to the cited file, with the quote below.
export function renderText(text) {
  const value = text.value || "";
  const notes = [...(text.annotations || [])].filter((a) => a && typeof a.start_index === "number").sort((a, b) => a.start_index - b.start_index);
  const body = h("div.text");
  const footnotes = [];
  let at = 0;
  for (const a of notes) {
    if (a.start_index < at) continue;
    body.append(value.slice(at, a.start_index));
    if (a.type === "file_citation") {
      const n = footnotes.length + 1;
      const fileId = a.file_citation && a.file_citation.file_id;
      body.append(h("a.cite", { href: `/console/files/${encodeURIComponent(fileId)}`, title: a.file_citation.quote || a.text, text: `[${n}]` }));
      footnotes.push(h("li", {}, fileLink(fileId), a.file_citation.quote ? h("q", {}, a.file_citation.quote) : null));
    } else if (a.type === "file_path") {
      body.append(fileLink(a.file_path.file_id, a.text));
    } else {
      body.append(a.text || "");
    }
    at = a.end_index;
  }
  body.append(value.slice(at));
  return footnotes.length ? [body, h("ol.citations", { "aria-label": "Citations" }, footnotes)] : [body];
}

function renderPart(part) {
  if (part.type === "text") return h("div.part", {}, renderText(part.text || { value: "" }));
  if (part.type === "image_file") return h("div.part", {}, image(part.image_file.file_id));
  if (part.type === "image_url") return h("div.part", {}, h("img.inline", { src: part.image_url.url, alt: "Image from URL", loading: "lazy" }));
  if (part.type === "refusal") return h("div.part.refusal", {}, part.refusal);
  return h("pre.part", {}, pretty(part));
}

export function renderMessage(msg) {
  const el = h("article.message", { class: `role-${msg.role}`, id: msg.id, dataset: { id: msg.id } });
  fillMessage(el, msg);
  return el;
}

function fillMessage(el, msg) {
  clear(
    el,
    h(
      "header",
      {},
      h("strong", {}, msg.role),
      " ",
      timeEl(msg.created_at),
      " ",
      msg.id ? copyable(msg.id) : null,
      msg.run_id ? h("span.muted", {}, " run ", h("a", { href: `#${msg.run_id}` }, msg.run_id)) : null,
      msg.status && msg.status !== "completed" ? [" ", badge(msg.status)] : null,
      msg.joined && msg.status === "in_progress" ? h("span.muted", {}, " (live: joined while it was being written)") : null,
    ),
    h("div.content", {}, (msg.content || []).map(renderPart)),
    msg.attachments && msg.attachments.length
      ? h(
          "ul.attachments",
          { "aria-label": "Attachments" },
          msg.attachments.map((a) => h("li", {}, "📎 ", fileLink(a.file_id), " ", h("span.muted", {}, (a.tools || []).map((t) => t.type).join(", ")))),
        )
      : null,
    msg.metadata && Object.keys(msg.metadata).length ? h("div.meta.muted", {}, "metadata ", JSON.stringify(msg.metadata)) : null,
  );
}

function usage(u) {
  if (!u) return "—";
  return `${u.prompt_tokens} prompt + ${u.completion_tokens} completion = ${u.total_tokens} tokens`;
}

// The same four rows whatever the run's state, so that a run ending does not push what is below its panel.
function runTimes(run) {
  const end = run.completed_at || run.failed_at || run.cancelled_at;
  return [
    ["created", timeEl(run.created_at)],
    ["started", timeEl(run.started_at)],
    end ? ["ended", timeEl(end)] : ["expires", timeEl(run.expires_at)],
    ["took", end ? fmtDuration(end - (run.started_at || run.created_at)) : "—"],
  ];
}

function renderToolCall(call) {
  if (call.type === "function") {
    const f = call.function || {};
    return h(
      "div.call.fn",
      {},
      h("div.call-head", {}, h("span.kind", {}, "function"), " ", h("strong", {}, f.name || ""), " ", h("code.muted", {}, call.id || "")),
      h("div.label", {}, "arguments"),
      h("pre.args", {}, pretty(f.arguments || "")),
      h("div.label", {}, "output"),
      f.output === null || f.output === undefined ? h("p.muted", {}, "no output submitted yet") : h("pre.output", {}, pretty(f.output)),
    );
  }
  if (call.type === "code_interpreter") {
    const ci = call.code_interpreter || {};
    return h(
      "div.call.ci",
      {},
      h("div.call-head", {}, h("span.kind", {}, "code interpreter"), " ", h("code.muted", {}, call.id || "")),
      h("div.label", {}, "input"),
      h("pre.code", {}, ci.input || ""),
      (ci.outputs || []).map((o) =>
        o.type === "logs" ? [h("div.label", {}, "logs"), h("pre.output", {}, o.logs)] : o.type === "image" ? h("div", {}, image(o.image.file_id, "Code interpreter image")) : h("pre", {}, pretty(o)),
      ),
    );
  }
  if (call.type === "file_search") {
    const fs = call.file_search || {};
    const results = fs.results || [];
    return h(
      "div.call.fs",
      {},
      h("div.call-head", {}, h("span.kind", {}, "file search"), " ", h("code.muted", {}, call.id || "")),
      fs.ranking_options ? h("div.muted", {}, `ranker ${fs.ranking_options.ranker}, threshold ${fs.ranking_options.score_threshold}`) : null,
      results.length
        ? h(
            "ol.results",
            {},
            results.map((r) =>
              h(
                "li",
                {},
                h("span.score", { title: "score" }, Number(r.score).toFixed(3)),
                " ",
                fileLink(r.file_id, r.file_name),
                (r.content || []).map((c) => h("blockquote", {}, c.text)),
              ),
            ),
          )
        : h("p.muted", {}, "no results"),
    );
  }
  return h("pre", {}, pretty(call));
}

export function renderStep(step) {
  const d = step.step_details || {};
  let body;
  if (d.type === "message_creation") {
    const id = d.message_creation && d.message_creation.message_id;
    body = h("div", {}, "created message ", h("a", { href: `#${id}` }, id));
  } else {
    body = h("div", {}, (d.tool_calls || []).filter(Boolean).map(renderToolCall));
  }
  return h(
    "li.step",
    { class: `t-${d.type}`, dataset: { id: step.id } },
    h(
      "div.step-head",
      {},
      h("span.kind", {}, d.type === "message_creation" ? "message" : "tool calls"),
      " ",
      badge(step.status),
      " ",
      timeEl(step.created_at),
      " ",
      h("code.muted", {}, step.id),
      step.usage ? h("span.muted", {}, ` · ${step.usage.total_tokens} tokens`) : null,
    ),
    step.last_error ? errorBox(step.last_error) : null,
    body,
  );
}

// Merge a `thread.run.step.delta` into the step it changes.
function mergeStepDelta(step, delta) {
  const d = delta && delta.step_details;
  if (!d || d.type !== "tool_calls") return;
  step.step_details = step.step_details || { type: "tool_calls", tool_calls: [] };
  const calls = (step.step_details.tool_calls = step.step_details.tool_calls || []);
  for (const tc of d.tool_calls || []) {
    const i = tc.index ?? calls.length;
    const cur = (calls[i] = calls[i] || { id: tc.id, type: tc.type });
    if (tc.id) cur.id = tc.id;
    if (tc.type === "function" && tc.function) {
      cur.function = cur.function || { name: "", arguments: "", output: null };
      if (tc.function.name) cur.function.name = tc.function.name;
      if (tc.function.arguments) cur.function.arguments += tc.function.arguments;
      if (tc.function.output !== undefined && tc.function.output !== null) cur.function.output = tc.function.output;
    } else if (tc.type === "code_interpreter" && tc.code_interpreter) {
      cur.code_interpreter = cur.code_interpreter || { input: "", outputs: [] };
      if (tc.code_interpreter.input) cur.code_interpreter.input += tc.code_interpreter.input;
      for (const o of tc.code_interpreter.outputs || []) cur.code_interpreter.outputs.push(o);
    } else if (tc.type === "file_search" && tc.file_search) {
      cur.file_search = { ...(cur.file_search || {}), ...tc.file_search };
    }
  }
}

// Merge a `thread.message.delta` into its message.
function mergeMessageDelta(msg, delta) {
  msg.content = msg.content || [];
  const simple = [];
  for (const part of delta.content || []) {
    const i = part.index ?? msg.content.length;
    if (part.type === "text") {
      const existed = Boolean(msg.content[i]);
      const cur = (msg.content[i] = msg.content[i] || { type: "text", text: { value: "", annotations: [] } });
      const added = (part.text && part.text.value) || "";
      cur.text.value += added;
      const notes = (part.text && part.text.annotations) || [];
      cur.text.annotations.push(...notes);
      if (existed && !notes.length) simple.push([i, added]);
      else simple.push(null);
    } else {
      const { index: _index, ...rest } = part;
      msg.content[i] = rest;
      simple.push(null);
    }
  }
  return simple;
}

export function runSummary(run) {
  return h(
    "div.run-head",
    {},
    h("div.row", {}, badge(run.status), " ", copyable(run.id), " ", h("span", {}, run.model || "")),
    h(
      "dl.kv",
      {},
      [["assistant", run.assistant_id ? h("a", { href: `/console/assistants/${run.assistant_id}` }, run.assistant_id) : "—"], ["usage", usage(run.usage)], ...runTimes(run)].map(
        ([k, v]) => [h("dt", {}, k), h("dd", { title: typeof v === "string" ? v : undefined }, v)],
      ),
    ),
    run.last_error ? errorBox(run.last_error) : null,
    run.incomplete_details ? h("div.error", {}, `incomplete: ${run.incomplete_details.reason}`) : null,
  );
}

// One run with its steps; `apply(name, data)` takes the run's events and keeps both, and the messages the run
// writes (through `onMessage`), up to date. When the run waits for function outputs, a form asks for them.
export class RunView {
  constructor(run, { onMessage, onSubmitted, threadId } = {}) {
    this.run = run;
    this.threadId = threadId || run.thread_id;
    this.steps = new Map();
    this.stepEls = new Map();
    this.onMessage = onMessage;
    this.onSubmitted = onSubmitted;
    this.messages = new Map();
    this.head = h("div");
    this.stepList = h("ol.steps", { "aria-label": "Steps" });
    this.action = h("div.action");
    this.el = h("section.run", { id: run.id, dataset: { id: run.id } }, this.head, this.action, h("h4", {}, "Steps"), this.stepList);
    this.renderHead();
  }

  renderHead() {
    clear(this.head, runSummary(this.run));
    this.el.dataset.status = this.run.status;
    this.renderAction();
  }

  // A message of this run already on the page (loaded from /v1): the run's events update it in place.
  adopt(msg, el) {
    this.messages.set(msg.id, { msg: { ...msg, content: msg.content || [], joined: msg.status === "in_progress" }, el });
  }

  setSteps(steps) {
    for (const s of steps) this.upsertStep(s);
  }

  upsertStep(step) {
    this.steps.set(step.id, step);
    const el = renderStep(step);
    const old = this.stepEls.get(step.id);
    if (old) old.replaceWith(el);
    else this.stepList.append(el);
    this.stepEls.set(step.id, el);
  }

  apply(name, data) {
    if (name.startsWith("thread.run.step.")) {
      if (name === "thread.run.step.delta") {
        const step = this.steps.get(data.id);
        if (step) {
          mergeStepDelta(step, data.delta);
          this.upsertStep(step);
        }
      } else {
        this.upsertStep(data);
      }
    } else if (name.startsWith("thread.run.")) {
      this.run = data;
      this.renderHead();
    } else if (name.startsWith("thread.message.")) {
      if (name === "thread.message.delta") {
        let entry = this.messages.get(data.id);
        if (!entry) {
          // Watching a run that was already writing this message: show what arrives from now on.
          const msg = { id: data.id, object: "thread.message", role: "assistant", status: "in_progress", run_id: this.run.id, created_at: this.run.created_at, content: [], attachments: [], metadata: {}, joined: true };
          entry = { msg, el: renderMessage(msg) };
          this.messages.set(data.id, entry);
          if (this.onMessage) this.onMessage(entry.el, msg);
        }
        const simple = mergeMessageDelta(entry.msg, data.delta);
        // Token by token: append to the text node when nothing else changed, so the page does not re-lay out.
        if (simple.length && simple.every(Boolean) && entry.el.querySelectorAll(".content > .part").length === entry.msg.content.length) {
          for (const [i, added] of simple) {
            const textEl = entry.el.querySelectorAll(".content > .part")[i].querySelector(".text");
            if (textEl) textEl.append(added);
          }
        } else {
          const el = renderMessage(entry.msg);
          entry.el.replaceWith(el);
          entry.el = el;
        }
      } else {
        const entry = this.messages.get(data.id);
        if (entry) {
          entry.msg = data;
          const el = renderMessage(data);
          entry.el.replaceWith(el);
          entry.el = el;
        } else {
          const el = renderMessage(data);
          this.messages.set(data.id, { msg: data, el });
          if (this.onMessage) this.onMessage(el, data);
        }
      }
    }
  }

  renderAction() {
    const ra = this.run.required_action;
    if (this.run.status !== "requires_action" || !ra || !ra.submit_tool_outputs) {
      clear(this.action);
      return;
    }
    if (this.action.dataset.for === this.run.id && this.action.firstChild) return;
    this.action.dataset.for = this.run.id;
    const calls = ra.submit_tool_outputs.tool_calls || [];
    const inputs = calls.map((c) => h("textarea", { rows: 2, "aria-label": `Output of ${c.function.name}`, name: c.id, required: true }));
    const status = h("div", { role: "status" });
    const form = h(
      "form.tool-outputs",
      {
        onsubmit: async (e) => {
          e.preventDefault();
          const button = form.querySelector("button");
          button.disabled = true;
          clear(status, "Submitting…");
          try {
            const tool_outputs = calls.map((c, i) => ({ tool_call_id: c.id, output: inputs[i].value }));
            clear(this.action);
            delete this.action.dataset.for;
            const path = `/v1/threads/${this.threadId}/runs/${this.run.id}/submit_tool_outputs`;
            await stream(path, { tool_outputs }, (n, d) => this.apply(n, d));
            if (this.onSubmitted) this.onSubmitted(this);
          } catch (err) {
            this.action.replaceChildren(errorBox(err));
            button.disabled = false;
          }
        },
      },
      h("h4", {}, "The run needs function outputs"),
      calls.map((c, i) =>
        h("div.field", {}, h("div", {}, h("strong", {}, c.function.name), " ", h("code.muted", {}, c.id)), h("pre.args", {}, pretty(c.function.arguments)), h("label", { for: `out-${c.id}`, text: "Output" }), Object.assign(inputs[i], { id: `out-${c.id}` })),
      ),
      h("button", { type: "submit" }, "Submit outputs"),
      status,
    );
    clear(this.action, form);
  }
}
