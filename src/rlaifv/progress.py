"""Progress bars and log lines, always on stderr, so `--json` output on stdout stays one clean object."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def log(message: str) -> None:
    console.print(message, highlight=False)


@contextmanager
def progress(description: str, total: int) -> Iterator[Bar]:
    """A bar with count, elapsed time and ETA; `bar.advance(n, **fields)` moves it and can show a status text."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=False) as p:
        task = p.add_task(description, total=total, status="")
        yield Bar(p, task)


class Bar:
    def __init__(self, p: Progress, task: int) -> None:
        self._p, self._task = p, task

    def advance(self, n: int = 1, status: str | None = None) -> None:
        if status is None:
            self._p.advance(self._task, n)
        else:
            self._p.update(self._task, advance=n, status=status)
