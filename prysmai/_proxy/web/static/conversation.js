// A trace's request and response as a conversation. Bodies are parsed JSON written by whoever
// talked to the model: every string goes in as text; images and audio become placeholders (never
// loaded: a captured image URL is shown as text only, so it cannot leak anything by being fetched).
import { el } from "./dom.js";

export function parseJSON(text) {
  if (typeof text !== "string" || !text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

// A captured body as the read API gives it: the JSON document it held (already a value), or its
// text (parsed here when it is JSON after all).
export function bodyDoc(body) {
  return body !== null && typeof body === "object" ? body : parseJSON(body);
}

// A captured body as text: its text, or its JSON document indented.
export function bodyText(body) {
  if (body === null || body === undefined) return null;
  return typeof body === "string" ? body : JSON.stringify(body, null, 2);
}

function str(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function part(p) {
  if (typeof p === "string") return el("div", { class: "text" }, p);
  if (!p || typeof p !== "object") return el("div", { class: "text" }, str(p));
  const type = String(p.type || "");
  if (type === "text" || type === "input_text" || type === "output_text") return el("div", { class: "text" }, str(p.text ?? ""));
  if (type.includes("image")) {
    const src = (p.image_url && (p.image_url.url || p.image_url)) || p.file_id || "";
    const shown = typeof src === "string" && src.startsWith("data:") ? src.slice(0, src.indexOf(",") + 1) + "…" : str(src);
    return el("div", { class: "placeholder" }, "[image] ", el("span", { class: "muted" }, shown.slice(0, 200)));
  }
  if (type.includes("audio")) return el("div", { class: "placeholder" }, "[audio]");
  if (type.includes("file")) return el("div", { class: "placeholder" }, "[file] ", str(p.filename || p.file_id || ""));
  return el("pre", { class: "text" }, str(p));
}

function content(value) {
  if (value === null || value === undefined) return [];
  if (Array.isArray(value)) return value.map(part);
  return [part(value)];
}

function toolCalls(calls) {
  return (calls || []).map((c) => {
    const fn = c.function || c;
    let args = fn.arguments ?? "";
    const parsed = typeof args === "string" ? parseJSON(args) : args;
    if (parsed !== null && typeof parsed === "object") args = JSON.stringify(parsed, null, 2);
    return el("div", { class: "tool-call" },
      el("div", { class: "tool-name" }, "tool call ", el("code", null, str(fn.name ?? c.type ?? "?")),
        c.id ? el("span", { class: "muted" }, " · " + str(c.id)) : null),
      el("pre", { class: "args" }, str(args)));
  });
}

export function message(role, body, extra) {
  const r = String(role || "message");
  return el("div", { class: "msg msg-" + (["system", "developer", "user", "assistant", "tool"].includes(r) ? r : "other"), "data-role": r },
    el("div", { class: "role" }, r, extra ? el("span", { class: "muted" }, " " + extra) : null), body);
}

function norm(m) {
  if (!m || typeof m !== "object") return JSON.stringify(m ?? null);
  const calls = (m.tool_calls || []).map((c) => [c.id, c.function && c.function.name, c.function && c.function.arguments]);
  return JSON.stringify([m.role, m.content ?? null, calls, m.tool_call_id ?? null]);
}

/** How many leading messages of a chat request repeat the previous turn of its session (that
 * turn's messages, then its answer): a session page shows each turn's new messages only. */
export function repeatedCount(prevReq, prevResp, req) {
  if (!req || !Array.isArray(req.messages) || !prevReq || !Array.isArray(prevReq.messages)) return 0;
  const before = [...prevReq.messages];
  const answer = prevResp && Array.isArray(prevResp.choices) && prevResp.choices[0] && prevResp.choices[0].message;
  if (answer) before.push(answer);
  let n = 0;
  while (n < before.length && n < req.messages.length && norm(before[n]) === norm(req.messages[n])) n++;
  return n >= prevReq.messages.length ? n : 0;  // only a real continuation is shortened
}

/** The request's messages (chat, responses, completions or embeddings input); ``skip`` leading
 * chat messages are left out (see repeatedCount). */
export function requestMessages(req, skip = 0) {
  if (!req || typeof req !== "object") return [];
  const out = [];
  if (typeof req.instructions === "string" && !skip) out.push(message("system", content(req.instructions), "(instructions)"));
  if (Array.isArray(req.messages)) {
    if (skip) out.push(el("div", { class: "muted repeated" }, `… ${skip} earlier message(s) of this session`));
    for (const m of req.messages.slice(skip)) {
      if (!m || typeof m !== "object") continue;
      const extra = m.tool_call_id ? "for " + str(m.tool_call_id) : m.name ? str(m.name) : "";
      out.push(message(m.role, [...content(m.content), ...toolCalls(m.tool_calls)], extra));
    }
  }
  if (req.input !== undefined) {
    if (typeof req.input === "string") out.push(message("user", content(req.input)));
    else if (Array.isArray(req.input)) {
      for (const item of req.input) {
        if (item && typeof item === "object" && item.role) out.push(message(item.role, content(item.content)));
        else if (item && item.type === "function_call") out.push(message("assistant", toolCalls([{ id: item.call_id, function: item }])));
        else if (item && item.type === "function_call_output") out.push(message("tool", content(item.output), "for " + str(item.call_id)));
        else out.push(message("input", content(item)));
      }
    }
  }
  if (req.prompt !== undefined) out.push(message("prompt", content(req.prompt)));
  return out;
}

/** The response (or the reassembled stream) as assistant messages. */
export function responseMessages(resp) {
  if (!resp || typeof resp !== "object") return [];
  const out = [];
  if (Array.isArray(resp.choices)) {
    for (const c of resp.choices) {
      const m = c.message || c.delta;
      const finish = c.finish_reason ? "finish: " + str(c.finish_reason) : "";
      if (m) out.push(message(m.role || "assistant", [...content(m.content), ...(m.refusal ? [el("div", { class: "text refusal" }, "refusal: " + str(m.refusal))] : []), ...toolCalls(m.tool_calls)], finish));
      else if (c.text !== undefined) out.push(message("assistant", content(c.text), finish));
    }
  }
  if (Array.isArray(resp.output)) {
    for (const item of resp.output) {
      if (item && item.type === "message") out.push(message(item.role || "assistant", content(item.content)));
      else if (item && item.type === "function_call") out.push(message("assistant", toolCalls([{ id: item.call_id, function: item }])));
      else out.push(message("output", content(item)));
    }
  } else if (typeof resp.output_text === "string") {
    out.push(message("assistant", content(resp.output_text)));
  }
  if (Array.isArray(resp.data) && resp.object === "list") {
    out.push(message("embeddings", [el("div", { class: "placeholder" }, `[${resp.data.length} embedding vector(s)]`)]));
  }
  return out;
}

const BODY_KEYS = new Set(["messages", "input", "prompt", "instructions"]);

/** The request's parameters: everything but the messages. */
export function parameters(req) {
  if (!req || typeof req !== "object" || Array.isArray(req)) return [];
  return Object.entries(req).filter(([k]) => !BODY_KEYS.has(k)).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]);
}
