"""The package's layers, checked: every import in src/rlaifv goes down this list, never up or across.

From the top (docs/architecture.md says why each sits where it does):

    cli          the command line: one module per command group over cli/common.py
    pipelines    compositions of stages: collect, best_of_n, loop, selection, world_bon, demo
    stages       feedback | train | infer | eval        siblings: no stage imports another
    logps        what train and infer share: pair encoding, packed log-probs, the reference pass
    data I/O     preferences > prompts > store > lock   pairs in, prompts in, the sharded store, one writer per folder
    world        the embedded default: scenes, language, its tiny models and their bootstrap, its configs
    engines      model compute: local HF models, OpenAI-compatible servers
    text         the splitter's text rules and formats (no model)
    foundation   config | records | progress | files | rlaifv   siblings: none imports another

Within one unit (a package such as `rlaifv.world`, or a module such as `rlaifv.store`) imports are free, except that
no module imports the `__init__` of a package it belongs to: the package imports its modules, not the other way
round (a package's `__main__`, which runs it, is the exception). Imports inside functions and under
`if TYPE_CHECKING:` count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "rlaifv"

# Top to bottom. A layer is (name, units, siblings): with siblings, its units may not import each other; without,
# they are listed top to bottom and may import only the ones after them.
LAYERS: list[tuple[str, tuple[str, ...], bool]] = [
    ("cli", ("rlaifv.cli",), False),
    ("pipelines", ("rlaifv.pipelines",), False),
    ("stages", ("rlaifv.feedback", "rlaifv.train", "rlaifv.infer", "rlaifv.eval"), True),
    ("logps", ("rlaifv.logps",), False),
    ("data I/O", ("rlaifv.preferences", "rlaifv.prompts", "rlaifv.store", "rlaifv.lock"), False),
    ("world", ("rlaifv.world",), False),
    ("engines", ("rlaifv.engines",), False),
    ("text", ("rlaifv.text",), False),
    ("foundation", ("rlaifv.config", "rlaifv.records", "rlaifv.progress", "rlaifv.files", "rlaifv"), True),
]
RANK = {unit: (layer, position, siblings)
        for layer, (_, units, siblings) in enumerate(LAYERS) for position, unit in enumerate(units)}
LAYER_NAME = {unit: LAYERS[layer][0] for unit, (layer, _, _) in RANK.items()}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = all_modules()


def unit_of(module: str) -> str:
    """The unit a module belongs to: `rlaifv` itself, or its top-level package or module under it."""
    return ".".join(module.split(".")[:2])


def imported(module: str, is_package: bool, tree: ast.AST, known: set[str]) -> list[tuple[int, str, str]]:
    """(line, target module, the statement as written) for every rlaifv import in the tree, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "rlaifv":
                    found.append((node.lineno, alias.name, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "rlaifv":
                continue
            names = ", ".join(a.name for a in node.names)
            statement = f"from {'.' * node.level}{node.module or ''} import {names}"
            for alias in node.names:  # `from pkg import submodule` imports the submodule (and pkg's __init__)
                target = f"{source}.{alias.name}"
                found.append((node.lineno, target if target in known else source, statement))
    return found


def violations(module: str, source: str, path: str, is_package: bool = False,
               known: set[str] | None = None) -> list[str]:
    """One message per import of `module` (whose code is `source`) that breaks the layer order."""
    known = set(MODULES) if known is None else known
    unit = unit_of(module)
    if unit not in RANK:
        return [f"{path}: {unit} is in no layer; add it to LAYERS in tests/test_layers.py and docs/architecture.md"]
    here = RANK[unit]
    problems = []
    for line, target, statement in imported(module, is_package, ast.parse(source), known):
        there_unit = unit_of(target)
        if there_unit not in RANK:
            problems.append(f"{path}:{line}: `{statement}` imports {target}, which is in no layer")
            continue
        there = RANK[there_unit]
        where = (f"{path}:{line}: `{statement}`: {unit} ({LAYER_NAME[unit]}) imports {there_unit} "
                 f"({LAYER_NAME[there_unit]})")
        if there_unit == unit:
            package = module if is_package else module.rsplit(".", 1)[0]
            runs_package = module.endswith(".__main__")  # `python -m pkg` runs it after pkg's __init__: no cycle
            if not runs_package and target not in ("rlaifv", module) and (package + ".").startswith(target + "."):
                problems.append(f"{path}:{line}: `{statement}`: {module} imports the __init__ of its own package "
                                f"{target}; the package imports its modules, not the other way round")
        elif there[0] < here[0]:
            problems.append(f"{where}, a layer above it")
        elif there[0] == here[0] and here[2]:
            problems.append(f"{where}, a sibling in the same layer")
        elif there[0] == here[0] and there[1] < here[1]:
            problems.append(f"{where}, listed above it in its layer")
    return problems


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    path = MODULES[module]
    problems = violations(module, path.read_text(), str(path.relative_to(SRC.parent)), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


def test_every_unit_has_modules():
    """A unit listed in LAYERS that no longer exists is a stale layer map."""
    units = {unit_of(m) for m in MODULES}
    assert set(RANK) <= units, sorted(set(RANK) - units)


def test_a_planted_upward_import_is_caught():
    """The check run on synthetic module sources: an upward import inside a function, a sibling stage, a package's
    own __init__, and an unplaced module are each reported with the file, the line and the statement."""
    up = "import json\n\n\ndef run():\n    from rlaifv.pipelines.collect import run_stage\n    return run_stage\n"
    problems = violations("rlaifv.feedback.sample", up, "src/rlaifv/feedback/sample.py")
    assert problems == ["src/rlaifv/feedback/sample.py:5: `from rlaifv.pipelines.collect import run_stage`: "
                        "rlaifv.feedback (stages) imports rlaifv.pipelines (pipelines), a layer above it"]

    across = "from rlaifv.train.dpo import train_dpo\n"
    assert "a sibling in the same layer" in violations("rlaifv.infer.bon", across, "bon.py")[0]

    lower_up = "from ..prompts import load_image\n"  # relative, from the data layer's bottom to its middle
    assert "listed above it in its layer" in violations("rlaifv.store", lower_up.replace("..", "."), "store.py")[0]

    back = "from rlaifv.cli import app\n"
    assert "imports the __init__ of its own package" in violations("rlaifv.cli.bon", back, "cli/bon.py")[0]

    assert "in no layer" in violations("rlaifv.newthing", "", "newthing.py")[0]

    down = "from rlaifv.logps.reference import compute_reference_logps\nfrom rlaifv.store import ShardedStore\n"
    assert violations("rlaifv.train.dpo", down, "dpo.py") == []
