"""Loading a user's model: the rules every loader keeps, in one place.

- **Weights from safetensors files only.** A pickled checkpoint (`pytorch_model.bin`) can run code while it is
  unpickled; a safetensors file holds tensors and nothing else. A model that has only pickled weights is refused
  with how to convert it once, unless the caller allows pickles explicitly.
- **`trust_remote_code` stays off** unless the user sets it: a model folder's own Python files run only then.
- **A published folder is checked first.** A checkpoint or final model this package wrote carries a manifest of its
  files' checksums (`rlaifv.files.verify_published`); a corrupt one raises `CorruptFile` instead of loading altered
  weights.
- **The processor** comes through engines.processors, which also loads the Qwen-VL and InternVL processors where
  torchvision is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaifv.files import verify_published


class PickledWeights(OSError):
    """The model has no safetensors weights, and loading pickled ones was not allowed."""


def load_weights(auto_class: Any, path: str | Path, dtype: Any = None, trust_remote_code: bool = False,
                 allow_pickle: bool = False) -> Any:
    """`auto_class.from_pretrained(path)` reading safetensors only (pickles only with `allow_pickle`), after
    checking a published folder against its manifest."""
    verify_published(path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return auto_class.from_pretrained(path, use_safetensors=not allow_pickle, **kwargs)
    except OSError as exc:
        if allow_pickle or "safetensors" not in str(exc).lower():
            raise
        raise PickledWeights(
            f"{path}: rlaifv loads model weights from safetensors files only (a pickled checkpoint can run code when "
            "it is loaded), and this model has none. Convert it once: load it with transformers where you trust "
            "it, then `model.save_pretrained(folder)` (safetensors is the default)."
        ) from exc


def load_vlm(path: str | Path, dtype: Any = None, device: Any = "cpu", trust_remote_code: bool = False) -> tuple:
    """(model in eval mode on `device`, processor) of an image-text-to-text model."""
    from transformers import AutoModelForImageTextToText

    from rlaifv.engines.processors import load_processor

    verify_published(path)  # before the processor too: its files are listed in the manifest as well
    processor = load_processor(path, trust_remote_code=trust_remote_code)
    model = load_weights(AutoModelForImageTextToText, path, dtype, trust_remote_code)
    return model.to(device).eval(), processor
