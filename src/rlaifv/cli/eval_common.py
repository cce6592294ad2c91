"""What the `rlaifv eval` command modules share: the options of LLM-judged commands, errors as one readable line,
and writing a scorer's result (`--out FILE`, `--json`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

from rlaifv.cli.common import emit

OutFileOpt = typer.Option(None, "--out", dir_okay=False, help="also write the result as JSON to this file (the "
                                                             "input of `rlaifv eval report`)")
ApiKeyEnvOpt = typer.Option("OPENAI_API_KEY", "--api-key-env",
                            help="name of the environment variable that holds the API key; unset = no key sent")
ConcurrencyOpt = typer.Option(4, "--concurrency", min=1, help="LLM requests in flight at once")
TimeoutOpt = typer.Option(120.0, "--timeout", min=1.0, help="seconds per LLM request before it is retried")
RetriesOpt = typer.Option(5, "--retries", min=0, help="retries per LLM request on timeouts, 429 and 5xx, with "
                                                      "exponential backoff")


@contextmanager
def readable_errors() -> Iterator[None]:
    """Missing or malformed benchmark files and refused LLM requests end the command with one clear line."""
    from rich.markup import escape

    from rlaifv.engines.openai_chat import ChatError
    from rlaifv.eval.benchfiles import BadBenchmarkFile, MissingBenchmarkFile
    from rlaifv.progress import console

    try:
        yield
    except (MissingBenchmarkFile, BadBenchmarkFile, ChatError, ValueError, OSError) as exc:
        # soft_wrap: a path in the message stays on one line, ready to copy
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def finish(result: dict[str, Any], out: Optional[Path], as_json: bool, human: str) -> None:
    from rlaifv.files import write_json

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
        human += f"\nwrote {out}"
    emit(result, as_json, human)


def pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def chat_client(url: str, model: Optional[str], api_key_env: str, concurrency: int, timeout: float, retries: int,
          max_tokens: int = 512):
    from rlaifv.engines.openai_chat import ChatClient, ChatSettings

    if not model:
        raise ValueError(f"a model name is needed for {url}")
    return ChatClient(ChatSettings(url=url, model=model, api_key_env=api_key_env, concurrency=concurrency,
                                   timeout_s=timeout, max_retries=retries, max_tokens=max_tokens))
