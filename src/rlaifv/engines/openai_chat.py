"""A small client for OpenAI-compatible chat-completion servers (OpenAI, vLLM, SGLang, llama.cpp, ...).

Used where a benchmark needs a text-only judge or extractor LLM (MMHal-Bench ratings, Object HalBench object
extraction). Standard library only. Timeouts, connection errors, answers cut off mid-body, 429 and 5xx answers are
retried with exponential backoff, because long evaluations meet them routinely and a retry costs nothing; any other
4xx is the caller's mistake (bad model name, bad key, bad URL) and fails at once with the server's message, since
retrying cannot fix it.
The API key is read from an environment variable whose *name* is configurable, and is sent only in the
Authorization header: it never appears in an error message or a log line.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any


class ChatError(RuntimeError):
    """A request the server refused (4xx), or one that still failed after every retry."""


class ChatRefused(ChatError):
    """A 4xx other than 408/429: this request is wrong (model name, context length, content) and retrying it cannot
    help; other requests may still succeed."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status code


@dataclass(frozen=True)
class ChatSettings:
    """Where the server is and how to talk to it."""

    url: str  # base URL ("http://host:8000/v1") or the full ".../chat/completions" endpoint
    model: str  # model name the server knows
    api_key_env: str = "OPENAI_API_KEY"  # name of the env variable holding the key; unset/empty = no key sent
    temperature: float = 0.0  # 0 keeps judge ratings reproducible where the server allows it
    max_tokens: int = 512  # cap on each answer
    timeout_s: float = 120.0  # per request
    max_retries: int = 5  # retries after the first try, on timeouts, connection errors, 429 and 5xx
    backoff_s: float = 2.0  # first wait; doubles after each failed try
    max_backoff_s: float = 60.0  # cap on one wait
    concurrency: int = 4  # requests in flight at once

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"


class ChatClient:
    """One user message in, the assistant's text out; `map` runs many with a bounded number in flight."""

    def __init__(self, settings: ChatSettings, sleep: Callable[[float], None] = time.sleep) -> None:
        if settings.concurrency < 1 or settings.max_retries < 0:
            raise ValueError("concurrency must be >= 1 and max_retries >= 0")
        self.settings = settings
        self._sleep = sleep

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.settings.api_key_env, "") if self.settings.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, body: bytes | None, endpoint: str) -> dict[str, Any]:
        """One try; a GET when there is no body."""
        request = urllib.request.Request(endpoint, data=body, headers=self._headers(),
                                         method="GET" if body is None else "POST")
        with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))

    def get_once(self, endpoint: str) -> dict[str, Any]:
        """GET `endpoint` once, no retries (for polling): the JSON answer, or the urllib/OS error."""
        return self._request(None, endpoint)

    def complete(self, prompt: str, system: str | None = None) -> str:
        """The assistant's answer to one user message (optionally after a system message)."""
        s = self.settings
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        answer = self.post({"model": s.model, "messages": messages, "temperature": s.temperature,
                            "max_tokens": s.max_tokens})
        return answer_text(answer, s.endpoint)

    def post(self, request: dict[str, Any], endpoint: str | None = None) -> dict[str, Any]:
        """The server's JSON answer to one request (to chat completions unless `endpoint` names another URL),
        retried as the module note says; ChatRefused for a 4xx that retrying cannot fix, ChatError when every try
        failed."""
        s = self.settings
        endpoint = endpoint or s.endpoint
        body = json.dumps(request).encode("utf-8")
        last = ""
        for attempt in range(s.max_retries + 1):
            if attempt:
                self._sleep(min(s.backoff_s * 2 ** (attempt - 1), s.max_backoff_s))
            try:
                return self._request(body, endpoint)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    raise ChatRefused(f"{endpoint} refused the request: HTTP {exc.code}: {detail}", exc.code) from None
                last = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"  # no answer, or one cut mid-body
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # a body cut short or garbled on the way
                last = f"unreadable answer: {exc}"
        raise ChatError(f"{endpoint}: no answer after {s.max_retries + 1} tries; last error: {last}")

    def map(self, prompts: Sequence[tuple[Any, str]], system: str | None = None) -> Iterator[tuple[Any, str]]:
        """(key, answer) for each (key, prompt), in completion order, with at most `concurrency` in flight.

        Yields each answer as soon as it arrives, so the caller can store it before the next one: an interrupted
        run keeps every answer it received. The first ChatError stops the run (pending requests are cancelled).
        """
        todo = iter(prompts)
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            running: dict[Future, Any] = {}

            def submit_next() -> None:
                item = next(todo, None)
                if item is not None:
                    running[pool.submit(self.complete, item[1], system)] = item[0]

            for _ in range(self.settings.concurrency):
                submit_next()
            try:
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        key = running.pop(future)
                        yield key, future.result()
                        submit_next()
            finally:
                for future in running:
                    future.cancel()


def answer_text(payload: dict[str, Any], endpoint: str) -> str:
    """The first choice's message text ("" for none); ChatError naming `endpoint` when the answer has no such field."""
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ChatError(f"{endpoint}: answer without choices[0].message.content: {str(payload)[:200]}") from None
    return content or ""
