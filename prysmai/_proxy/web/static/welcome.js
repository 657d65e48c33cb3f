// An empty store: how to send the first trace, with this proxy's address filled into snippets to
// copy -- the configured public URL (--public-url), else the address this browser reached the
// dashboard at. Never a key: the snippets read it from $PRYSM_API_KEY. Built as text nodes, like
// everything else, so no address can become markup.
import { getJSON } from "./api.js";
import { el } from "./dom.js";

/** The proxy's API base as its clients should use it. */
export function apiBase(me) {
  const root = me && me.public_url ? me.public_url : location.origin;
  return root.replace(/\/+$/, "") + "/api/v1";
}

function snippet(id, title, code) {
  const pre = el("pre", { class: "raw snippet", id }, code);
  const copy = el("button", { type: "button", class: "secondary copy", "data-copy": id }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(code);
      copy.textContent = "Copied";
    } catch {
      // No clipboard (not a secure context): select the text so Ctrl+C works.
      const range = document.createRange();
      range.selectNodeContents(pre);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      copy.textContent = "Selected: press Ctrl+C";
    }
  });
  return el("div", { class: "snippet-box" }, el("h3", null, title, " "), copy, pre);
}

function firstTrace(me) {
  const base = apiBase(me);
  const python = [
    "# pip install prysmai openai",
    "# export PRYSM_API_KEY=...   (a key of this proxy)",
    "import openai, prysmai",
    "",
    `client = prysmai.monitor(openai.OpenAI(api_key="unused"), base_url="${base}")`,
    "answer = client.chat.completions.create(",
    '    model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]',
    ")",
    "print(answer.choices[0].message.content)",
  ].join("\n");
  const curl = [
    `curl ${base}/chat/completions \\`,
    '  -H "Authorization: Bearer $PRYSM_API_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}'`,
  ].join("\n");
  return el("section", { class: "welcome", id: "welcome", "data-base-url": base },
    el("h2", null, "No traces yet: send the first one"),
    el("p", null, "Point an OpenAI client at this proxy, ", el("code", { id: "welcome-base" }, base),
      ", with one of its keys (",
      el("code", null, "PRYSM_API_KEY"), "). The provider's key stays with the proxy (",
      el("code", null, "OPENAI_API_KEY"), " in its environment). The trace shows up here a moment later."),
    snippet("snippet-python", "Python, with prysmai", python),
    snippet("snippet-curl", "curl", curl));
}

/** The first-trace help when the key's store holds no trace at all (not merely none in the
 * range or the filters), else null. A read-only dashboard (`prysmai ui`) is not a proxy: it says
 * where traces come from instead. */
export async function welcomeIfEmpty(me) {
  let doc;
  try {
    doc = await getJSON("traces", { limit: "1" });
  } catch {
    return null;  // the page says what failed elsewhere
  }
  if (doc.data.length) return null;
  if (me && me.read_only) {
    return el("section", { class: "welcome", id: "welcome" }, el("h2", null, "No traces yet"),
      el("p", null, "This dashboard only reads its store. Traces come from ", el("code", null, "prysmai proxy"),
        " writing to it: send requests to the proxy, then reload this page."));
  }
  return firstTrace(me);
}
