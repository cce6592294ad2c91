"""The per-family fixtures of tests/families.py: they build, save, load back offline and compute the same logits.

Also pins what later parity tests rely on: distributions far from flat (position and mask errors show), image token
counts that vary with image size for the variable-resolution families, and processors that load without torchvision.
"""

from __future__ import annotations

import families as F
import numpy as np
import pytest
import torch

# families whose number of image tokens depends on the image's size / aspect ratio
VARIABLE = {"llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "internvl"}
VIDEO_SLOT = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl"}


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """name -> (model, processor, folder); each family built and saved once per session, on first use."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            model, proc = F.make_family(name)
            folder = tmp_path_factory.mktemp(name)
            F.save_family(model, proc, folder)
            cache[name] = (model, proc, folder)
        return cache[name]

    return get


@pytest.fixture(scope="session", autouse=True)
def _offline(micro_cache):
    """Nothing here may reach the model hub (micro_cache sets HF_HUB_OFFLINE)."""


def _forward(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("name", F.FAMILIES)
def test_round_trip_through_auto_classes(name, built):
    from transformers import AutoModelForImageTextToText

    from rlaifv.engines.processors import load_processor

    model, proc, folder = built(name)
    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    loaded_proc = load_processor(folder)
    assert type(loaded) is type(model)
    assert type(loaded_proc).__name__ == type(proc).__name__

    want = F.family_inputs(name, proc)
    got = F.family_inputs(name, loaded_proc)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert (want["input_ids"] == model.config.image_token_id).any(1).all(), "every prompt holds its image"

    logits = _forward(model, want)
    assert torch.isfinite(logits).all()
    assert torch.equal(_forward(loaded, got), logits)


@pytest.mark.parametrize("name", F.FAMILIES)
def test_tokenizer_answers_are_single_tokens(name, built):
    _, proc, _ = built(name)
    tok = proc.tokenizer
    for word in ("yes", "no", "Yes", "No", " yes", " no", " Yes", " No"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word


@pytest.mark.parametrize("name", F.FAMILIES)
def test_sharpened(name, built):
    """Next-token distributions far from uniform; positions that are off change the probabilities."""
    model, proc, _ = built(name)
    inputs = F.family_inputs(name, proc)
    probs = _forward(model, inputs).softmax(-1)
    real = inputs["attention_mask"].bool()
    vocab = probs.shape[-1]
    assert probs.max(-1).values[real].mean() > 50 / vocab

    kwargs = dict(inputs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    if name.startswith("qwen"):
        kwargs["position_ids"] = positions  # plain 1-D positions instead of the M-RoPE grid
    else:
        # text after the image placed 5 positions further on, as if the image had 5 more tokens
        image = ids == model.config.image_token_id
        after_image = (image.long().cumsum(-1) > 0) & ~image
        kwargs["position_ids"] = positions + 5 * after_image
    moved = _forward(model, kwargs).softmax(-1)
    assert (moved - probs)[real].abs().max() > 1e-2


@pytest.mark.parametrize("name", sorted(VARIABLE))
def test_image_token_counts_vary_with_size(name, built):
    """Variable-resolution families give the three images different token counts (and tile counts or grids)."""
    model, proc, _ = built(name)
    inputs = F.family_inputs(name, proc)
    counts = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert len(set(counts)) > 1, counts
    assert max(counts) < 64, counts
    tiles = F.tiles_per_image(name, proc, inputs)
    if name.startswith("qwen"):
        grids = inputs["image_grid_thw"].tolist()
        assert len({tuple(g) for g in grids}) == len(grids), grids
    else:
        assert len(set(tiles)) > 1, tiles


@pytest.mark.parametrize("name", F.FAMILIES)
def test_precomputed_image_features_give_the_same_logits(name, built):
    """`get_image_features(..., return_dict=True)` passed back as `mm_encoder_outputs={"image": ...}` (instead of
    pixel values) reproduces the forward: the route for encoding an image once and reusing it."""
    import inspect

    model, proc, _ = built(name)
    inputs = F.family_inputs(name, proc)
    encode = model.model.get_image_features
    extra = {k: inputs[k] for k in inspect.signature(encode).parameters if k in inputs and k != "pixel_values"}
    with torch.no_grad():
        features = encode(inputs["pixel_values"], return_dict=True, **extra)
    rest = {k: v for k, v in inputs.items() if k not in ("pixel_values", "pixel_attention_mask")}
    assert torch.equal(_forward(model, {**rest, "mm_encoder_outputs": {"image": features}}), _forward(model, inputs))


def test_images_differ_in_size_and_content():
    images = F.family_images()
    assert len(images) >= 3
    assert len({im.size for im in images}) == len(images)
    assert len({round(im.width / im.height, 2) for im in images}) == len(images)
    assert all(len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 50 for im in images)  # not blank
    assert [im.tobytes() for im in F.family_images()] == [im.tobytes() for im in images]


def test_build_is_deterministic(tmp_path):
    """Same seed, same weights (also through build_family's folder); another seed, other weights."""
    from transformers import AutoModelForImageTextToText

    a, _ = F.make_family("qwen2_vl", seed=3)
    c, _ = F.make_family("qwen2_vl", seed=4)
    assert F.build_family("qwen2_vl", tmp_path, seed=3) == tmp_path
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path).state_dict()
    sa, sc = a.state_dict(), c.state_dict()
    assert saved.keys() == sa.keys()
    assert all(torch.equal(sa[k], saved[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", sorted(VIDEO_SLOT))
def test_processor_loads_without_torchvision(name, built):
    """The plain AutoProcessor fails here for want of torchvision; load_processor gives the same outputs."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    from rlaifv.engines.processors import load_processor

    if is_torchvision_available():
        pytest.skip("torchvision is installed: AutoProcessor loads these processors itself")
    _, proc, folder = built(name)
    with pytest.raises(ImportError, match="Torchvision"):
        AutoProcessor.from_pretrained(folder)
    loaded = load_processor(folder)
    assert not hasattr(loaded, "video_processor")
    want, got = F.family_inputs(name, proc), F.family_inputs(name, loaded)
    for k in ("input_ids", "pixel_values"):
        assert torch.equal(want[k], got[k]), k
    assert loaded.chat_template == proc.chat_template


@pytest.mark.parametrize("layout", ["nested", "separate", "legacy", "none"])
def test_load_processor_checkpoint_layouts(layout, built, tmp_path):
    """Where a checkpoint keeps its video processor settings: nested in processor_config.json (transformers 5.x),
    in video_preprocessor_config.json, beside a pre-5.x preprocessor_config.json, or nowhere."""
    import json
    import shutil

    from transformers.utils import is_torchvision_available

    from rlaifv.engines.processors import load_processor

    if is_torchvision_available():
        pytest.skip("torchvision is installed: AutoProcessor loads these processors itself")
    _, proc, folder = built("qwen2_vl")
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    video = config.pop("video_processor")
    if layout == "nested":
        config["video_processor"] = video
    if layout in ("separate", "legacy"):
        (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video))
    if layout == "legacy":
        image = {**config.pop("image_processor"), "processor_class": config["processor_class"]}
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(image))
        (tmp_path / "processor_config.json").unlink()
    else:
        (tmp_path / "processor_config.json").write_text(json.dumps(config))
    loaded = load_processor(tmp_path)
    assert type(loaded).__name__ == "Qwen2VLProcessor"
    want, got = F.family_inputs("qwen2_vl", proc), F.family_inputs("qwen2_vl", loaded)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_load_processor_reraises_other_failures(tmp_path):
    from rlaifv.engines.processors import load_processor

    with pytest.raises(Exception):  # noqa: B017 -- an empty folder is no checkpoint, with or without torchvision
        load_processor(tmp_path)


def test_processors_module_is_torch_free():
    import subprocess
    import sys

    code = "import sys, rlaifv.engines.processors; sys.exit(int(bool({'torch', 'transformers'} & set(sys.modules))))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
