"""What loading a user's model refuses: pickled weights (they can run code while unpickled) and a model folder's own
Python code unless `trust_remote_code` is set -- both checked on real folders, the second by a planted module that
would leave a file behind if it ever ran."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch
from families import build_family, make_family
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from rlaifv.engines.hf import HFEngine
from rlaifv.engines.loading import PickledWeights, load_weights


def test_a_model_with_only_pickled_weights_is_refused_with_how_to_convert_it(tmp_path):
    model, processor = make_family("llava")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for file in tmp_path.glob("*.safetensors"):  # the same weights as a pickle, the way older checkpoints ship
        torch.save(load_file(file), tmp_path / "pytorch_model.bin")
        file.unlink()
    with pytest.raises(PickledWeights, match="safetensors files only"):
        HFEngine(tmp_path)
    allowed = load_weights(AutoModelForImageTextToText, tmp_path, allow_pickle=True)  # only when asked for
    assert type(allowed) is type(model)


def test_a_model_folder_s_own_code_never_runs_unless_trusted(tmp_path):
    folder = build_family("llava", tmp_path / "model")
    marker = tmp_path / "code-ran"
    (folder / "planted.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlavaConfig as PlantedConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "planted.PlantedConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    engine = HFEngine(folder)  # transformers' own Llava class, the planted module never imported
    assert type(engine.model).__name__ == "LlavaForConditionalGeneration" and not marker.exists()
    config["model_type"] = "planted-vlm"  # a type only the folder's code defines: refused, still never run
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        HFEngine(folder)
    assert not marker.exists()
    from transformers import LlavaConfig

    registered = LlavaConfig._auto_class
    try:
        with contextlib.suppress(Exception):  # asked for: the folder's code runs (what the refusals above prevent)
            HFEngine(folder, trust_remote_code=True)
    finally:  # loading it registered transformers' own LlavaConfig as the folder's AutoConfig class: undone, or
        LlavaConfig._auto_class = registered  # every later save_pretrained of a LLaVA looks for the planted file
    assert marker.exists()
    shutil.rmtree(folder)
