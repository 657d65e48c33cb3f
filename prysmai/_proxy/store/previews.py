"""The one-line previews a traces list shows: the start of the last user message and of the answer.

Computed once, when a row is built (by :func:`.keep.apply`, after redaction and the body cap, so
a preview never holds what the stored bodies do not), and stored in the columns
``prompt_preview`` and ``answer_preview`` (schema 6 on SQLite, 2 on PostgreSQL): a list page reads
two short columns instead of every body of the page. Traces stored before that have none.

What is previewed, by the shapes the proxy captures:

* the request: the last ``user`` message of ``messages`` (chat), of ``input`` (Responses; or
  ``input`` itself when it is text), the ``prompt`` (completions), the first ``input`` of an
  embeddings request; a body that is not JSON, its text;
* the answer: the first choice's content, refusal or tool calls (chat, a reassembled stream
  included), its ``text`` (completions), ``output_text`` or the output's messages and function
  calls (Responses), the number of embedding vectors; an error document, its message; a body
  that is not JSON, its text.

Content parts that are not text (images, audio, files) are ``[image]``, ``[audio]``, ``[file]``.
Whitespace runs become one space, and the preview stops after :data:`PREVIEW_CHARS` characters
(with ``…``). Previews are captured text like any other: shown as text, escaped in the CLI,
neutralised in CSV.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Characters a preview keeps.
PREVIEW_CHARS = 160
#: The columns, in :data:`~.rows.COLUMNS` order.
COLUMNS = ("prompt_preview", "answer_preview")


def fill(row: dict[str, Any]) -> dict[str, Any]:
    """Set ``row``'s previews from its (stored) bodies; returns ``row``."""
    row["prompt_preview"] = _line(_prompt(_doc(row.get("request_body"))))
    row["answer_preview"] = _line(_answer(_doc(row.get("response_body"))))
    return row


def _doc(text: Any) -> Any:
    """The body as a JSON value when it is a document, else its text (``None``: no body)."""
    if not isinstance(text, str) or not text.strip():
        return None
    if text.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass
    return text


def _line(text: str | None) -> str | None:
    if text is None:
        return None
    # At most this much is looked at: a 1 MiB message costs no more than a short one.
    one = " ".join(text[: PREVIEW_CHARS * 8].split())
    if not one:
        return None
    return one if len(one) <= PREVIEW_CHARS else one[: PREVIEW_CHARS - 1] + "…"


def _content(value: Any) -> str | None:
    """A message's content as text: the text parts, placeholders for the others."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None
    out = []
    for part in value:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict):
            kind = str(part.get("type") or "")
            if isinstance(part.get("text"), str):
                out.append(part["text"])
            elif "image" in kind:
                out.append("[image]")
            elif "audio" in kind:
                out.append("[audio]")
            elif "file" in kind:
                out.append("[file]")
    return " ".join(out) if out else None


def _last_user(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content(message.get("content"))
    return None


def _prompt(doc: Any) -> str | None:
    if isinstance(doc, str) or doc is None:
        return doc
    if not isinstance(doc, dict):
        return None
    if "messages" in doc:
        return _last_user(doc["messages"])
    given = doc.get("input")
    if isinstance(given, str):
        return given
    if isinstance(given, list):
        found = _last_user(given)
        if found is not None:
            return found
        first = given[0] if given else None
        return first if isinstance(first, str) else None  # embeddings of several inputs
    prompt = doc.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[-1] if prompt else None
    return prompt if isinstance(prompt, str) else None


def _tool_calls(calls: Any) -> str | None:
    if not isinstance(calls, list) or not calls:
        return None
    names = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else call.get("name") if isinstance(call, dict) else None
        names.append(str(name) if name is not None else "?")
    return "[tool call] " + ", ".join(names)


def _answer(doc: Any) -> str | None:
    if isinstance(doc, str) or doc is None:
        return doc
    if not isinstance(doc, dict):
        return None
    error = doc.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    choices = doc.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict):
            text = _content(message.get("content"))
            if text:
                return text
            if isinstance(message.get("refusal"), str):
                return "[refusal] " + str(message["refusal"])
            call = message.get("function_call")
            return _tool_calls(message.get("tool_calls") or ([call] if isinstance(call, dict) else None))
        return choice.get("text") if isinstance(choice.get("text"), str) else None
    if isinstance(doc.get("output_text"), str):
        return str(doc["output_text"])
    output = doc.get("output")
    if isinstance(output, list):
        texts = []
        calls = []
        for item in output:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                text = _content(item.get("content"))
                if text:
                    texts.append(text)
            elif item.get("type") == "function_call":
                calls.append(item)
        if texts:
            return " ".join(texts)
        return _tool_calls(calls)
    data = doc.get("data")
    if doc.get("object") == "list" and isinstance(data, list):
        return f"[{len(data)} embedding vector(s)]"
    return None
