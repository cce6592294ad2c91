"""What every command shares: output, loading a config with the options given, and errors as exit codes.

Exit codes: 0 done; 1 bad input or files met while running, an output another process is writing, or a full disk
(a message, no traceback); 2 a bad command line or config, or a missing optional package. With `--json`, a command
prints exactly one JSON object on stdout; everything else (progress bars, logs, errors) goes to stderr.

Nothing here imports torch, so `rlaifv --help` starts fast; commands import what they run inside their functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, Optional, TypeVar

import typer
from pydantic import BaseModel
from rich.markup import escape

from rlaifv.config import HFEngineConfig
from rlaifv.files import out_of_space
from rlaifv.progress import log
from rlaifv.world.config import WorldConfig

M = TypeVar("M", bound=BaseModel)

JsonOpt = typer.Option(False, "--json", help="print one JSON object on stdout")
ForceConfigOpt = typer.Option(False, "--force-config",
                              help="continue an output made with another config anyway: the new config replaces "
                                   "the recorded one and the output then mixes both runs' results. Without it such a "
                                   "rerun is refused, listing what differs; to start fresh, use a new output "
                                   "instead")


def emit(obj: Any, as_json: bool, human: str) -> None:
    """The command's result: one JSON object on stdout with --json, else the human-readable text on stderr."""
    if as_json:
        typer.echo(json.dumps(obj))
    else:
        log(human)


def fail(message: str, code: int) -> NoReturn:
    """End the command with a one-line error instead of a traceback."""
    log(f"[red]error:[/red] {escape(message)}")  # a message may hold brackets (lists, paths) that are not markup
    raise typer.Exit(code)


@contextmanager
def exit_on_error(import_hint: str = "") -> Iterator[None]:
    """Errors of a command's library call as one-line messages and exit codes: 2 for a missing package (with
    `import_hint`, e.g. what to install), 1 for bad input or files."""
    try:
        yield
    except ImportError as exc:
        fail(f"{exc}{import_hint}", 2)
    except (ValueError, OSError) as exc:
        fail(out_of_space(exc) or str(exc), 1)


@contextmanager
def writing(out: Optional[Path], file: bool = False) -> Iterator[None]:
    """Hold a command's output folder (or, with `file`, its output file) while it writes, so a second command on
    the same output is refused at once (rlaifv.lock) instead of mixing two runs' files: exit code 1 naming the
    process that holds it. The library calls beneath hold it too; in one process that is the same hold. None: the
    command keeps nothing."""
    if out is None:
        yield
        return
    from rlaifv.lock import FolderInUse, hold

    held = hold(out, file=file)
    try:
        held.__enter__()
    except FolderInUse as exc:
        fail(str(exc), 1)
    try:
        yield
    finally:
        held.__exit__(None, None, None)


def run_long(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) under `exit_on_error`."""
    with exit_on_error():
        return fn(*args)


def load_config(model: type[M], path: Optional[Path], options: dict[tuple[str, ...], Any] | None = None,
                start: dict[str, Any] | None = None) -> M:
    """`rlaifv.config.read_config` for a command: a bad file or value ends it with exit code 2 and the field named."""
    from pydantic import ValidationError

    from rlaifv.config import read_config

    try:
        return read_config(model, path, options, start)
    except (ValidationError, ValueError, OSError) as exc:
        fail(f"{path or 'options'}: {exc}", 2)


DryRunOpt = typer.Option(False, "--dry-run",
                         help="check the whole config (YAML and options), read local model configs (no weights), "
                              "print the resolved config, the settings that differ from the paper's and the work it "
                              "implies, and exit without running anything")


def prompts_are_world(prompts: Optional[Path], out: Optional[Path] = None) -> bool:
    """Whether a command works on the synthetic world's prompts: the prompts file (`rlaifv world prompts` wrote it),
    else the prompts already stored in `out` (their first one carries a world scene). The world's defaults and
    models apply only then; anything else gets the paper's defaults and must name its models."""
    from rlaifv.prompts import is_world_prompts

    if prompts is not None:
        return is_world_prompts(prompts)
    if out is not None and (out / "prompts" / "shards").exists():
        from rlaifv.records import Prompt
        from rlaifv.store import ShardedStore

        first = next(iter(ShardedStore(out / "prompts", Prompt).read()), None)
        return first is not None and first.meta.get("world") is not None
    return False


def resolve_config(model: type[M], path: Optional[Path], options: dict[tuple[str, ...], Any] | None,
                   world: bool) -> M:
    """`load_config` over the right defaults: the world's (`rlaifv.world.config.world_defaults`) on world prompts,
    the paper's (the configs' own) on anything else. The two are never mixed."""
    from rlaifv.world.config import world_defaults

    return load_config(model, path, options, start=world_defaults(model) if world else None)


def dry_run_result(make: Callable[[], dict[str, Any]], as_json: bool) -> None:
    """Print a dry run's plan (`cli.plan`), or end with the error it found (exit code 2, the field named)."""
    from rlaifv.cli.plan import PlanError, human

    try:
        result = make()
    except (PlanError, ValueError, OSError) as exc:
        fail(str(exc), 2)
    if as_json:
        emit(result, True, "")
    else:  # as it is: no markup, no wrapping, so the YAML in it can be copied
        typer.echo(human(result), err=True)


def local_engine_options(cfg: BaseModel, roles: Iterable[tuple[str, ...]],
                         **fields: Any) -> dict[tuple[str, ...], Any]:
    """Options that set `fields` (e.g. device, dtype) on those engines at `roles` of a loaded config that are
    loaded here: `--device` moves the local models and leaves served ones, which have no device, alone."""
    options: dict[tuple[str, ...], Any] = {}
    for role in roles:
        engine: Any = cfg
        for key in role:
            engine = getattr(engine, key)
        if isinstance(engine, HFEngineConfig):
            options.update({(*role, name): value for name, value in fields.items()})
    return options


def world_config(preset: str, config: Optional[Path], seed: int) -> WorldConfig:
    """The world of a command: the preset, then the YAML file's fields, then --seed."""
    try:
        start = WorldConfig.preset(preset).model_dump()  # type: ignore[arg-type]
    except ValueError as exc:
        fail(str(exc), 2)
    return load_config(WorldConfig, config, {("seed",): seed}, start=start)


def quiet_libraries() -> None:
    """Keep third-party chatter (download bars, torchvision notices) off the user's terminal."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def deepspeed_logs_to_stderr() -> None:
    """Send DeepSpeed's log lines to stderr, where they cannot break `--json`'s one object on stdout.

    Where DeepSpeed is installed, accelerate imports it in every training process (whatever the strategy), and its
    logger writes to stdout -- its first line, which accelerator it found, during the import itself. Importing it
    here with stdout pointed at stderr makes its log handler keep stderr.
    """
    import importlib.util
    import sys
    from contextlib import redirect_stdout, suppress

    if "deepspeed" in sys.modules or importlib.util.find_spec("deepspeed") is None:
        return
    with redirect_stdout(sys.stderr), suppress(ImportError):  # a broken install fails later, where it is used
        import deepspeed  # noqa: F401
