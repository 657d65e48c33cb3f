"""Captured exchanges shaped as OpenAI's API really writes them, for the writer benchmarks.

What the proxy captures is not just prose: OpenAI's chat completion answer is indented JSON with
an ``id`` of ``chatcmpl-`` and 29 random characters, a ``created`` Unix time, the dated model
name, ``service_tier``, ``system_fingerprint`` and usage with its token details; a streamed answer
is one compact ``chat.completion.chunk`` event per token or two, all carrying the same id, time and
fingerprint, then a usage-only chunk and ``[DONE]``; an embeddings answer is 1 536 floats written
with up to 19 significant digits. Those digits, ids and times are what gates on numbers and
literals see on every trace, so a benchmark without them is optimistic.

:func:`exchanges` draws a mix: chat completions (60 %), streamed chat completions (30 %),
embeddings (10 %), the prompts and answers made of prose with numbers, times, versions, prices
and Markdown, a tenth of them holding one sensitive value (:data:`SENSITIVE`).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from typing import Any

from _common import WORDS

#: What a tenth of the prompts or answers hold: one value of a redaction set each.
SENSITIVE = (
    "mail me at ada.lovelace@example.org",
    "key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "card 4111 1111 1111 1111",
    "call +44 20 7946 0958",
    "the server is 192.168.17.201",
)
_CAPS = ("Python", "OpenAI", "PostgreSQL", "SQLite", "Monday", "January", "Berlin", "Docker", "API", "JSON", "The")
_NUMBERS = (
    lambda r: str(r.randint(2, 99)),
    lambda r: str(r.randint(1990, 2030)),
    lambda r: f"{r.randint(1, 99)}.{r.randint(0, 99):02d}",
    lambda r: f"${r.randint(1, 999)}.{r.randint(0, 99):02d}",
    lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}",
    lambda r: f"v{r.randint(0, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
    lambda r: f"{r.randint(1, 100)}%",
    lambda r: f"{r.randint(2020, 2026)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    lambda r: f"{r.randint(1, 999)},{r.randint(0, 999):03d}",
)


def prose(rng: random.Random, words: int) -> str:
    """Sentences of ``words`` words about software: capitals, numbers, punctuation, some Markdown."""
    out: list[str] = []
    sentence = 0
    for _ in range(words):
        r = rng.random()
        if sentence == 0:
            word = rng.choice(_CAPS) if r < 0.3 else rng.choice(WORDS).capitalize()
        elif r < 0.08:
            word = rng.choice(_NUMBERS)(rng)
        elif r < 0.12:
            word = rng.choice(_CAPS)
        elif r < 0.14:
            word = f"`{rng.choice(WORDS)}_{rng.choice(WORDS)}()`"
        else:
            word = rng.choice(WORDS)
        sentence += 1
        if sentence > rng.randint(6, 18):
            word += rng.choice((".", ".", ".", "?", ":", "!"))
            sentence = 0
            if rng.random() < 0.15:
                word += rng.choice(("\n\n", "\n- ", "\n\n## Next\n\n", "\n1. "))
        elif rng.random() < 0.06:
            word += ","
        out.append(word)
    text = " ".join(out).replace("\n ", "\n")
    return text + "."


def _id(rng: random.Random, prefix: str, n: int) -> str:
    return prefix + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def chat_answer(rng: random.Random, model: str, content: str, created: int) -> dict[str, Any]:
    prompt, completion = rng.randint(20, 3000), max(1, len(content) // 4)
    return {
        "id": _id(rng, "chatcmpl-", 29),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(rng, prompt, completion),
        "service_tier": "default",
        "system_fingerprint": _id(rng, "fp_", 10).lower(),
    }


def _usage(rng: random.Random, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": rng.choice((0, 0, 1024, 1152)), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def stream_chunks(rng: random.Random, model: str, content: str, created: int) -> list[bytes]:
    """The SSE frames of a streamed chat completion of ``content`` (with ``include_usage``)."""
    head = {
        "id": _id(rng, "chatcmpl-", 29),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": _id(rng, "fp_", 10).lower(),
    }

    def frame(choices: list[Any], usage: Any = None) -> bytes:
        doc = {**head, "choices": choices, "usage": usage}
        return b"data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[Any]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    frames = [frame(choice({"role": "assistant", "content": "", "refusal": None}))]
    at = 0
    while at < len(content):  # a token is about four characters
        step = rng.randint(2, 7)
        frames.append(frame(choice({"content": content[at : at + step]})))
        at += step
    frames.append(frame(choice({}, "stop")))
    frames.append(frame([], _usage(rng, rng.randint(20, 3000), max(1, len(content) // 4))))
    frames.append(b"data: [DONE]\n\n")
    return frames


def embeddings_answer(rng: random.Random, model: str, inputs: int, dims: int = 1536) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": [rng.gauss(0.0, 0.025) for _ in range(dims)]}
            for i in range(inputs)
        ],
        "model": model,
        "usage": {"prompt_tokens": 8 * inputs, "total_tokens": 8 * inputs},
    }


def exchanges(n: int, seed: int, now: float, chat_only: bool = False) -> Iterator[dict[str, Any]]:
    """``n`` exchanges: dicts with ``endpoint``, ``model``, ``stream``, ``request`` (bytes) and
    ``response`` (bytes) or ``chunks`` (list of SSE frames). ``chat_only``: non-streamed chat
    completions only."""
    rng = random.Random(seed)
    for i in range(n):
        created = int(now) - n + i
        kind = rng.uniform(0.4, 1.0) if chat_only else rng.random()
        if kind < 0.1:
            model = "text-embedding-3-small"
            inputs = [prose(rng, rng.randint(5, 40)) for _ in range(rng.choice((1, 1, 1, 4)))]
            if rng.random() < 0.1:
                inputs[0] += " " + rng.choice(SENSITIVE)
            request = {"input": inputs if len(inputs) > 1 else inputs[0], "model": model, "encoding_format": "float"}
            answer = embeddings_answer(rng, model, len(inputs))
            yield {
                "endpoint": "embeddings",
                "model": model,
                "stream": False,
                "request": json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode(),
                "response": json.dumps(answer, indent=2).encode(),
            }
            continue
        model, dated = rng.choice((("gpt-4o-mini", "gpt-4o-mini-2024-07-18"), ("gpt-4o", "gpt-4o-2024-08-06")))
        question = prose(rng, rng.randint(15, 120))
        content = prose(rng, rng.randint(30, 300))
        if rng.random() < 0.1:
            if rng.random() < 0.5:
                question += " " + rng.choice(SENSITIVE)
            else:
                content += " " + rng.choice(SENSITIVE)
        stream = kind < 0.4
        request: dict[str, Any] = {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer in Markdown."},
                {"role": "user", "content": question},
            ],
            "model": model,
            "temperature": 0.7,
        }
        if stream:
            request.update(stream=True, stream_options={"include_usage": True})
        out: dict[str, Any] = {
            "endpoint": "chat/completions",
            "model": model,
            "stream": stream,
            "request": json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode(),
        }
        if stream:
            out["chunks"] = stream_chunks(rng, dated, content, created)
        else:
            out["response"] = json.dumps(chat_answer(rng, dated, content, created), indent=2).encode()
        yield out
