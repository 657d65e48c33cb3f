// Trace detail, and a session's traces as one conversation timeline.
import { getJSON, sendJSON } from "./api.js";
import { apiParams } from "./filters.js";
import { bodyDoc, bodyText, parameters, repeatedCount, requestMessages, responseMessages } from "./conversation.js";
import { filterLink, metaText } from "./slice.js";
import { clear, costStatus, costText, el, facts, fmtCost, fmtMs, fmtNum, fmtTime, pageLink, scoreAverages, scoreChips, scoreValue, sessionLink, statusBadge, traceCost, traceLink } from "./dom.js";

// The name the reviewer's thumbs are stored under (a boolean score).
const THUMBS = "thumbs";

/** The trace's scores, and (unless the dashboard only reads) a reviewer's thumbs up/down with a
 * comment. Every score name, value and comment is put in as text. */
function scoresSection(t, me) {
  const section = el("section", { id: "scores" }, el("h2", null, "Scores"));
  const list = el("ul", { class: "score-list", id: "score-list" });
  const message = el("p", { class: "muted", id: "score-message", role: "status" });

  function draw(scores) {
    clear(list);
    for (const s of scores) {
      const by = s.source === "dashboard" ? "reviewer " + s.key_id : s.key_id;
      const remove = me && me.read_only ? null : el("button", { type: "button", class: "secondary small", "data-delete": s.id }, "Delete");
      if (remove) remove.addEventListener("click", async () => {
        remove.disabled = true;
        try {
          await sendJSON("DELETE", "scores/" + encodeURIComponent(s.id));
          await refresh();
        } catch (err) {
          message.textContent = String(err.message || err);
          remove.disabled = false;
        }
      });
      list.append(el("li", { class: "score", "data-score": s.name, "data-score-id": s.id },
        el("span", { class: "score-name" }, s.name), " ", el("strong", { class: "score-value" }, scoreValue(s)),
        el("span", { class: "muted" }, ` · ${fmtTime(s.created_at, true)} · by ${by}`), " ", remove,
        s.comment ? el("div", { class: "score-comment" }, s.comment) : null));
    }
    if (!scores.length) list.append(el("li", { class: "muted" }, "No scores yet."));
  }

  async function refresh() {
    const fresh = await getJSON("traces/" + encodeURIComponent(t.id));
    draw(fresh.scores || []);
  }

  draw(t.scores || []);
  section.append(list);
  if (!(me && me.read_only)) {
    const comment = el("textarea", { id: "score-comment", rows: "2", maxlength: "2000", placeholder: "comment (optional)", "aria-label": "comment" });
    const send = async (value) => {
      message.textContent = "";
      try {
        await sendJSON("POST", "traces/" + encodeURIComponent(t.id) + "/scores",
          { name: THUMBS, value, comment: comment.value.trim() ? comment.value : null });
        comment.value = "";
        message.textContent = "Saved.";
        await refresh();
      } catch (err) {
        message.textContent = String(err.message || err);
      }
    };
    const up = el("button", { type: "button", id: "thumbs-up", title: "good answer", "aria-label": "thumbs up" }, "👍");
    const down = el("button", { type: "button", id: "thumbs-down", class: "secondary", title: "bad answer", "aria-label": "thumbs down" }, "👎");
    up.addEventListener("click", () => send(true));
    down.addEventListener("click", () => send(false));
    section.append(el("div", { class: "review" }, comment, el("div", { class: "review-buttons" }, up, " ", down)));
  }
  section.append(message);
  return section;
}

function timingBar(t) {
  const total = t.latency_ms;
  if (total === null || total === undefined) return null;
  const bar = el("div", { class: "timing", id: "timing", "data-latency": total, "data-ttft": t.ttft_ms ?? "" });
  const ttft = el("div", { class: "timing-ttft" });
  const rest = el("div", { class: "timing-rest" });
  // Widths through the CSSOM: the CSP forbids inline style attributes, not this.
  const share = t.ttft_ms !== null && t.ttft_ms !== undefined && total > 0 ? Math.min(100, (t.ttft_ms / total) * 100) : 0;
  ttft.style.width = share + "%";
  rest.style.width = 100 - share + "%";
  bar.append(ttft, rest);
  const legend = el("div", { class: "timing-legend" },
    t.ttft_ms !== null && t.ttft_ms !== undefined ? el("span", { class: "key key-ttft" }, "time to first token " + fmtMs(t.ttft_ms)) : null,
    el("span", { class: "key key-total" }, "total " + fmtMs(total)));
  return el("section", null, el("h2", null, "Timing"), bar, legend);
}

function rawBlock(title, body, id) {
  const parsed = bodyDoc(body);
  const shown = parsed !== null ? JSON.stringify(parsed, null, 2) : bodyText(body) ?? "";
  const pre = el("pre", { class: "raw", id }, shown);
  const copy = el("button", { type: "button", class: "secondary copy", "data-copy": id }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(shown);
      copy.textContent = "Copied";
    } catch {
      // No clipboard (e.g. not a secure context): select the text so Ctrl+C works.
      const range = document.createRange();
      range.selectNodeContents(pre);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      copy.textContent = "Selected: press Ctrl+C";
    }
  });
  return el("details", { class: "raw-box" }, el("summary", null, title, " "), copy, pre);
}

/** A link to the traces list with the list this trace came from (or every trace, opened on its
 * own), filtered by `name` = `value` too. */
function facet(name, value, label) {
  const here = new URLSearchParams(location.search);
  if (!here.get("since")) here.set("since", "all");
  return filterLink(name, value, label, "/traces", here);
}

// Keys a metadata filter can name (no quote, backslash or control character).
const FILTERABLE_KEY = /^[^"\\\u0000-\u001f\u007f-\u009f]+$/;

function metadataList(meta) {
  if (!meta || typeof meta !== "object") return meta ? String(meta) : null;
  const dl = el("dl", { class: "meta" });
  for (const [k, v] of Object.entries(meta)) {
    const shown = typeof v === "string" ? v : JSON.stringify(v);
    const asText = metaText(v);
    // A member a filter can match is a link adding "key=value" to the list's filters.
    const value = asText !== null && FILTERABLE_KEY.test(k) ? facet("meta", k + "=" + asText, shown) : shown;
    dl.append(el("dt", null, k), el("dd", null, value));
  }
  return dl;
}

// A long conversation shows its first message (the system prompt, usually) and its last few; the
// ones between fold into one line with their count, opened by a click.
const FOLD_KEEP_START = 1;
const FOLD_KEEP_END = 3;

function folded(messages) {
  if (messages.length <= FOLD_KEEP_START + FOLD_KEEP_END + 1) return messages;
  const middle = messages.slice(FOLD_KEEP_START, messages.length - FOLD_KEEP_END);
  const fold = el("details", { class: "fold", id: "folded", "data-count": middle.length },
    el("summary", null, `${middle.length} earlier messages (show)`), middle);
  return [...messages.slice(0, FOLD_KEEP_START), fold, ...messages.slice(messages.length - FOLD_KEEP_END)];
}

// The codes of the errors this proxy answers itself (the trace's error_code), said in words.
const PROXY_CODES = {
  project_rate_limit_exceeded: "refused by this proxy: the project's requests_per_minute limit (the provider was not called)",
  project_budget_exceeded: "refused by this proxy: the project's monthly_budget_usd (the provider was not called)",
};

/** Whose error a failed trace holds: the code of an error this proxy answered itself (a limit's
 * 429...), said as such, or else the code in the provider's own error answer, said as the
 * provider's. Both are text. */
function errorCode(t, resp) {
  if (t.error_code) {
    return el("span", { id: "trace-error-code", "data-source": "proxy" }, el("code", null, t.error_code), " ",
      el("span", { class: "muted" }, PROXY_CODES[t.error_code] || "answered by this proxy, not the provider"));
  }
  const theirs = resp && typeof resp === "object" && resp.error && typeof resp.error === "object" ? resp.error.code : null;
  if (t.status === "success" || (typeof theirs !== "string" && typeof theirs !== "number")) return null;
  return el("span", { id: "trace-error-code", "data-source": "provider" }, el("code", null, String(theirs)), " ",
    el("span", { class: "muted" }, "from the provider's answer"));
}

/** Previous / next along the list this trace was opened from (its filters and order are in this
 * page's URL), and the way back to it; nothing when opened from elsewhere. */
function listNav(id) {
  const url = new URLSearchParams(location.search);
  if (url.get("list") !== "1") return null;
  const nav = el("nav", { class: "pager trace-nav", id: "trace-nav" });
  const back = new URLSearchParams(url);
  back.delete("list");
  nav.append(pageLink("/traces", back, "« back to the list"));
  const link = (target, label, navId) => {
    if (!target) return el("span", { class: "muted", id: navId }, label);
    const a = pageLink("/traces/" + encodeURIComponent(target), url, label);
    a.id = navId;
    return a;
  };
  getJSON("neighbours", apiParams(location.search, { trace: id, sort: url.get("sort") || "time", order: url.get("order") || "desc" }))
    .then((doc) => nav.append(link(doc.previous, "‹ previous", "trace-previous"), link(doc.next, "next ›", "trace-next")))
    .catch((err) => nav.append(el("span", { class: "error" }, String(err.message || err))));
  return nav;
}

export async function renderTrace(main, id, me) {
  clear(main).append(el("p", { class: "muted" }, "Loading…"));
  let t;
  try {
    t = await getJSON("traces/" + encodeURIComponent(id));
  } catch (err) {
    clear(main).append(el("h1", null, "Trace"), el("p", { class: "error" }, String(err.message || err)));
    return;
  }
  const req = bodyDoc(t.request_body);
  const resp = bodyDoc(t.response_body);
  const status = costStatus(t);
  const priceNote = status === "priced"
    ? fmtCost(t.cost_usd) + (me && me.pricing ? " · prices: " + me.pricing : "")
    : status === "unpriced"
      ? "unpriced: no price for this model in the price table (never counted as $0)"
      : "no usage reported by the provider: nothing to price";
  const summary = facts([
    ["status", statusBadge(t.status, t.http_status)],
    ["error", t.error ? el("span", { class: "error-text" }, t.error) : null],
    ["error code", errorCode(t, resp)],
    ["time", el("span", { id: "trace-time", "data-unix": t.created_at }, fmtTime(t.created_at, true))],
    ["project", t.project ? facet("project", t.project) : null],
    ["provider", t.provider ? facet("provider", t.provider) : null],
    ["model", t.model ? facet("model", t.model) : null],
    ["answered by", t.response_model && t.response_model !== t.model ? t.response_model : null],
    ["endpoint", `${t.method} /api/v1/${t.endpoint}`],
    ["streamed", t.stream ? "yes" : "no"],
    ["latency", fmtMs(t.latency_ms)],
    ["TTFT", t.ttft_ms !== null && t.ttft_ms !== undefined ? fmtMs(t.ttft_ms) : null],
    ["tokens", `${fmtNum(t.total_tokens)} (${fmtNum(t.prompt_tokens)} in, ${fmtNum(t.completion_tokens)} out)`],
    ["cost", priceNote],
    ["user", t.user_id ? facet("user", t.user_id) : null],
    ["session", t.session_id ? [sessionLink(t.session_id), " ", facet("session", t.session_id, "(filter the list)")] : null],
    ["key", t.key_id ? pageLink("/traces", { key: t.key_id, since: "all" }, t.key_id) : null],
    ["provider request id", t.provider_request_id],
    ["trace id", t.id],
    ["notes", Array.isArray(t.notes) ? t.notes.join("\n") : t.notes],
  ]);
  const meta = t.metadata ? el("section", null, el("h2", null, "Metadata"), metadataList(t.metadata)) : null;
  const request = requestMessages(req);
  const response = responseMessages(resp);
  const params = parameters(req);
  clear(main).append(
    listNav(t.id),
    el("h1", null, "Trace ", el("code", null, t.id.slice(0, 12))),
    el("div", { class: "detail" },
      el("div", { class: "detail-main" },
        // The answer first, then what was asked (its middle folded when long).
        el("section", { class: "conversation", id: "response" }, el("h2", null, t.stream ? "Response (reassembled stream)" : "Response"),
          response.length ? response : el("pre", { class: "text" }, bodyText(t.response_body) ?? "(no body)")),
        el("section", { class: "conversation", id: "request" }, el("h2", null, "Request"),
          request.length ? folded(request) : el("pre", { class: "text" }, bodyText(t.request_body) ?? "(no body)")),
        scoresSection(t, me),
        params.length ? el("section", null, el("h2", null, "Parameters"), facts(params)) : null,
        rawBlock("Raw request JSON", t.request_body, "raw-request"),
        rawBlock("Raw response JSON", t.response_body, "raw-response")),
      el("aside", { class: "detail-side" }, summary, timingBar(t), meta)));
}

// A session's timeline, a page at a time: its totals are all of its traces'; "Load more" appends
// the next page (each turn shows what it added to the conversation, across pages too).
const SESSION_PAGE = 100;

export async function renderSession(main, sessionId) {
  clear(main).append(el("p", { class: "muted" }, "Loading…"));
  const path = "sessions/" + encodeURIComponent(sessionId);
  let doc;
  try {
    doc = await getJSON(path, { limit: String(SESSION_PAGE) });
  } catch (err) {
    clear(main).append(el("h1", null, "Session"), el("p", { class: "error" }, String(err.message || err)));
    return;
  }
  const totals = doc.totals;
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  const shown = el("span", { id: "shown" });
  const more = el("button", { type: "button", class: "secondary", id: "load-more" }, "Load more");
  const status = el("p", { class: "muted", id: "timeline-status" }, shown, " ", more);
  let count = 0;
  let prev = { req: null, resp: null };

  function append(traces) {
    for (const t of traces) {
      const reqDoc = bodyDoc(t.request_body);
      const respDoc = bodyDoc(t.response_body);
      // A chat request repeats the conversation so far: show what this turn added.
      const latest = requestMessages(reqDoc, repeatedCount(prev.req, prev.resp, reqDoc));
      prev = { req: reqDoc, resp: respDoc };
      timeline.append(el("li", { class: "turn", "data-trace": t.id },
        el("div", { class: "turn-head" }, traceLink(t.id, fmtTime(t.created_at)), " ", statusBadge(t.status, t.http_status),
          el("span", { class: "muted" }, ` ${t.model ?? ""} · ${fmtMs(t.latency_ms)} · ${fmtNum(t.total_tokens)} tokens · ${traceCost(t)}`)),
        latest, responseMessages(respDoc),
        t.error ? el("div", { class: "error-text" }, t.error) : null,
        t.scores && t.scores.length ? el("div", { class: "turn-scores" }, scoreChips(t.scores)) : null));
    }
    count += traces.length;
    shown.textContent = `showing ${fmtNum(count)} of ${fmtNum(totals.requests)} traces`;
  }

  let cursor = doc.next_cursor;
  more.hidden = !cursor;
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const next = await getJSON(path, { limit: String(SESSION_PAGE), cursor });
      append(next.traces);
      cursor = next.next_cursor;
      more.hidden = !cursor;
    } catch (err) {
      status.append(el("span", { class: "error" }, " " + String(err.message || err)));
    }
    more.disabled = false;
  });
  append(doc.traces);
  clear(main).append(
    el("h1", null, "Session ", el("code", null, sessionId)),
    facts([
      ["traces", el("span", { id: "session-requests" }, fmtNum(totals.requests))],
      ["errors", `${fmtNum(totals.errors)} errors · ${fmtNum(totals.cancelled)} cancelled`],
      ["tokens", fmtNum(totals.total_tokens)],
      ["cost", el("span", { id: "session-cost" }, costText(totals.cost_usd, totals.unpriced) +
        (totals.no_usage ? ` · ${fmtNum(totals.no_usage)} reported no usage` : ""))],
      ["first / last", `${fmtTime(totals.first_seen)} – ${fmtTime(totals.last_seen)}`],
      ["scores", el("span", { id: "session-scores" }, scoreAverages(totals.scores))],
      ["all its traces", pageLink("/traces", { session: sessionId, since: "all" }, "in the traces table")],
    ]),
    count ? timeline : el("p", { class: "muted" }, "No traces in this session."),
    count ? status : null);
}
