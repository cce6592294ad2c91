"""Resumable batches of LLM calls (judge ratings, object extraction), stored one JSONL line per answer.

Every answer is written durably the moment it arrives, keyed by its work item; a rerun asks only for the items
whose key is not in the file yet. So an interrupted run never pays for a call twice and never counts one twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from rlaifv.eval.benchfiles import JsonlLog
from rlaifv.progress import progress


def prompt_sha256(prompt: str, system: str | None = None) -> str:
    """Identity of what was asked: a stored answer is reused only for the very same question."""
    return hashlib.sha256(f"{system or ''}\x00{prompt}".encode()).hexdigest()


class Chat(Protocol):
    """What a judge or extractor needs: answers to many prompts, yielded as they arrive."""

    def map(self, prompts: Sequence[tuple[Any, str]], system: str | None = None) -> Iterator[tuple[Any, str]]: ...


def run_calls(
    chat: Chat,
    log: JsonlLog,
    jobs: Sequence[tuple[Any, str, dict[str, Any]]],
    field: str,
    description: str,
    system: str | None = None,
) -> int:
    """Ask `chat` every (key, prompt, extra) job whose key is not in `log`; store {key, field: answer, **extra}.

    Each stored line carries the SHA-256 of its prompt; a line whose prompt has changed since (edited responses, a
    new prompt text) is stale and asked again. Returns how many calls were made (0 when all were in the log).
    """
    jobs = [(key, prompt, {**extra, "prompt_sha256": prompt_sha256(prompt, system)}) for key, prompt, extra in jobs]
    for key, _, extra in jobs:
        stored = log.rows.get(key, {}).get("prompt_sha256")
        if stored is not None and stored != extra["prompt_sha256"]:
            log.forget(key)
    todo = [(key, prompt) for key, prompt, _ in jobs if key not in log]
    extras = {key: extra for key, _, extra in jobs}
    with progress(description, len(jobs)) as bar:
        bar.advance(len(jobs) - len(todo))
        for key, answer in chat.map(todo, system):
            log.append([{log.key: key, field: answer, **extras[key]}])
            bar.advance(1)
    return len(todo)


class LocalChat:
    """A local Hugging Face chat causal LM behind the same `map` interface as the HTTP client.

    Generation is engines.hf_chat's (greedy, batched by prompt length, the model's own chat template), the one the
    LLM claim splitter runs, so the package has one implementation of "prompt in, text out" on a local model.
    """

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "float32", max_new_tokens: int = 512,
                 batch_size: int = 8) -> None:
        from rlaifv.engines.hf_chat import HFChat

        self._llm = HFChat(path, device=device, dtype=dtype, max_new_tokens=max_new_tokens, batch_size=batch_size)
        self.batch_size = batch_size

    def map(self, prompts: Sequence[tuple[Any, str]], system: str | None = None) -> Iterator[tuple[Any, str]]:
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            texts = [f"{system}\n\n{p}" if system else p for _, p in chunk]
            for (key, _), (text, _finished) in zip(chunk, self._llm.generate(texts)):
                yield key, text
