"""Shared fixtures: one micro world, bootstrapped once per test session into a private cache; the one-process DPO
run the multi-process runs are compared with; a stand-in policy for benchmark generation."""

from __future__ import annotations

import os

import pytest

from rlaifv.world.config import WorldConfig


@pytest.fixture(scope="session")
def micro_cache(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("rlaifv-cache")
    os.environ["RLAIFV_CACHE"] = str(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return str(path)


@pytest.fixture(scope="session")
def micro_config() -> WorldConfig:
    return WorldConfig.preset("micro")


@pytest.fixture(scope="session")
def micro_world(micro_cache, micro_config):
    from rlaifv.world.bootstrap import bootstrap

    return bootstrap(micro_config)


@pytest.fixture(scope="session")
def dpo_one_process(micro_world, tmp_path_factory) -> dict:
    """The one-process DPO run the multi-process runs are compared with (distributed_runs), made once."""
    from distributed_runs import one_process_run

    return one_process_run(tmp_path_factory.mktemp("dpo-one-process"), micro_world.policy)


@pytest.fixture()
def echo_policy(monkeypatch):
    """`rlaifv eval generate` without a model: answers every prompt with 'seen: <prompt>' and records the sizes of
    the images it was given."""
    seen = []

    def decode(engine, images, questions, cfg):
        seen.extend(im.size for im in images)
        return [f"seen: {q}" for q in questions]

    from rlaifv.eval import bench_generate

    monkeypatch.setattr(bench_generate, "decode", decode)
    return seen
