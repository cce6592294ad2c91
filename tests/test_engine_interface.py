"""Both engines keep the one engine interface (engines.base): every method of `VLM` and `TextLLM`, with the same
parameters, so a stage written against it runs on a local model or a server alike; and the interface loads no torch."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from rlaifv.engines.base import VLM, TextLLM
from rlaifv.engines.hf import HFEngine
from rlaifv.engines.hf_chat import HFChat
from rlaifv.engines.openai_vlm import OpenAIEngine


def _methods(protocol) -> dict[str, list[str]]:
    """Public methods of a Protocol and their parameter names (self left out)."""
    return {name: list(inspect.signature(fn).parameters)[1:] for name, fn in vars(protocol).items()
            if callable(fn) and not name.startswith("_")}


@pytest.mark.parametrize(("protocol", "engine"), [(VLM, HFEngine), (VLM, OpenAIEngine), (TextLLM, HFChat),
                                                  (TextLLM, OpenAIEngine)])
def test_the_engine_keeps_every_method_of_the_interface_with_its_parameters(protocol, engine):
    wanted = _methods(protocol)
    assert wanted, "the interface declares methods"
    for name, params in wanted.items():
        assert callable(getattr(engine, name, None)), f"{engine.__name__} has no {name}"
        got = list(inspect.signature(getattr(engine, name)).parameters)[1:]
        assert got == params, f"{engine.__name__}.{name}{got} differs from {protocol.__name__}.{name}{params}"


def test_a_local_engine_is_a_vlm_at_run_time(micro_world):
    engine = HFEngine(micro_world.labeler)
    assert isinstance(engine, VLM) and engine.fast_paths() == {}  # no fast path used yet


def test_the_interface_loads_no_torch():
    code = "import sys, rlaifv.engines.base; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
