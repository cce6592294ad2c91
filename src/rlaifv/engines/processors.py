"""Load a model's processor, also on a CPU-only machine without torchvision.

In transformers 5.x the processors of the Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) and of InternVL have a
video-processor slot, and every video processor needs torchvision. Without torchvision `AutoProcessor.from_pretrained`
fails on that slot before any image or text is touched: ImportError "Qwen2VLVideoProcessor requires the Torchvision
library" for the checkpoint's video processor, or, building such a processor by hand, AttributeError on the
placeholder `VIDEO_PROCESSOR_MAPPING._extra_content` while the slot's class is checked. A CPU-only install often has
no torchvision: PyPI's wheels are built against one exact torch and do not import beside a local CPU build of torch.

rlaifv only sends images and text. `load_processor` tries the plain `AutoProcessor.from_pretrained` first; only if
that fails while making the video processor, torchvision is missing and the checkpoint's processor is a built-in
transformers class with a video slot, it loads that same class with the video slot left out
(`processor_without_video`): the image processor, tokenizer, chat template and processor settings come from the
checkpoint exactly as `AutoProcessor` reads them, so the outputs for images and text are the same. Passing `videos=`
to such a processor is not supported.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

VIDEO_SLOT = "video_processor"


@functools.cache
def processor_without_video(cls: type) -> type:
    """Processor class `cls` (a transformers `ProcessorMixin`) with its video-processor slot left out.

    A subclass under the same name: `get_attributes()` omits the slot, so `__init__` takes the image processor and
    tokenizer only (the class passes `video_processor=None` on, which `ProcessorMixin` then ignores), `from_pretrained`
    loads no video processor, and `save_pretrained` writes the original `processor_class`, which `AutoProcessor`
    loads wherever torchvision is installed. Classes without a video slot are returned as they are.
    """
    if VIDEO_SLOT not in cls.get_attributes():
        return cls

    @classmethod
    def get_attributes(klass):
        return [a for a in super(sub, klass).get_attributes() if a != VIDEO_SLOT]

    @classmethod
    def from_dict(klass, processor_dict, **kwargs):
        # a checkpoint may nest the video processor's settings in processor_config.json: nothing takes them here
        processor_dict = {k: v for k, v in processor_dict.items() if k != VIDEO_SLOT}
        kwargs.pop(VIDEO_SLOT, None)
        return super(sub, klass).from_dict(processor_dict, **kwargs)

    sub = type(
        cls.__name__,
        (cls,),
        {
            "get_attributes": get_attributes,
            "from_dict": from_dict,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": f"{cls.__name__} without its video processor (no torchvision here).",
        },
    )
    return sub


def load_processor(path: str | os.PathLike, trust_remote_code: bool = False):
    """The checkpoint's processor: `AutoProcessor.from_pretrained`, or, where that fails only because torchvision is
    missing for the processor's video slot, the same processor class without that slot (see the module docstring)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:  # re-raised unless it is the missing-torchvision failure
        cls = _fallback_class(path, err)
        if cls is None:
            raise
        log.info("%s: no torchvision for the video processor; loading %s without it", path, cls.__name__)
        return processor_without_video(cls).from_pretrained(path)


def _fallback_class(path, err: BaseException) -> type | None:
    """The built-in processor class to load without its video slot, or None when the fallback does not apply."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available() or not _mentions_video_backend(err):
        return None
    name = _processor_class_name(path)
    if name is None:
        return None
    from transformers.models.auto.processing_auto import processor_class_from_name

    try:
        cls = processor_class_from_name(name)
    except Exception:
        return None
    if cls is None or not isinstance(cls, type) or VIDEO_SLOT not in cls.get_attributes():
        return None
    return cls


def _mentions_video_backend(err: BaseException) -> bool:
    """Whether `err`, or an exception it chains, comes from making the video processor: raised inside transformers'
    video-processor modules, or naming torchvision / the video-processor registry (the placeholder registry raises
    AttributeError on `VIDEO_PROCESSOR_MAPPING._extra_content`; a placeholder video processor class raises
    ImportError "... requires the Torchvision library")."""
    import traceback

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = f"{type(err).__name__}: {err}"
        if "VIDEO_PROCESSOR_MAPPING" in text or "torchvision" in text.lower():
            return True
        frames = traceback.extract_tb(err.__traceback__)
        if any(os.path.basename(f.filename).startswith("video_processing") for f in frames):
            return True
        err = err.__cause__ or err.__context__
    return False


def _processor_class_name(path) -> str | None:
    """`processor_class` as the checkpoint records it (processor, preprocessor or tokenizer config), else the
    processor registered for its `model_type`; None for remote code (`auto_map`) or a folder that says nothing."""
    root = Path(path)
    if not root.is_dir():
        return None
    for fname in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        f = root / fname
        if f.is_file():
            data = json.loads(f.read_text())
            if "AutoProcessor" in (data.get("auto_map") or {}):
                return None
            if data.get("processor_class"):
                return data["processor_class"]
    f = root / "config.json"
    if f.is_file():
        data = json.loads(f.read_text())
        if "AutoProcessor" in (data.get("auto_map") or {}):
            return None
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        return PROCESSOR_MAPPING_NAMES.get(data.get("model_type"))
    return None
