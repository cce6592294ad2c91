"""Image inputs for a batch of packed rows, each distinct image through the vision tower once.

A packed row holds one image's prefix and a bounded number of continuations (engines.packing.pack_bounds), so an
image with many questions or candidates fills several rows. Passing each row its own pixels runs the vision tower
once per row. Models of transformers 5 that take precomputed encoder outputs (`mm_encoder_outputs`, the same path
`generate` uses to encode images before the prefill) get each distinct image's features once, repeated over its rows.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from rlaifv.engines.family import Vision, concat_vision


def takes_image_features(model: torch.nn.Module, vision: Vision) -> bool:
    """Whether the model's forward takes precomputed image features and its image encoder consumes every one of
    these processor outputs (otherwise the forward would still need the rest)."""
    encoder = getattr(model, "get_image_features", None)
    if encoder is None or "pixel_values" not in vision:
        return False
    if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
        return False
    return set(vision) <= set(inspect.signature(encoder).parameters)


# Fields of an image encoder's output that the bank may drop: the features the language model reads are the pooled
# ones; an encoder that returns anything else per image (e.g. Qwen3-VL's deepstack features) goes the pixel path.
PLAIN_ENCODER_FIELDS = frozenset({"pooler_output", "last_hidden_state", "hidden_states", "attentions"})


class ImageBank:
    """Images for batches of rows: each distinct image through the vision tower once, its features handed to every
    row that shows it (inference only: the encoder runs outside the model's forward, which a wrapped training model
    such as DDP or FSDP must not see). Where the model cannot take precomputed features, or its encoder returns a
    layout the bank does not know, rows carry their pixels."""

    def __init__(self, model: torch.nn.Module, visions: list[Vision], device: torch.device | str) -> None:
        self.visions, self.device = visions, device
        self.features: torch.Tensor | list[torch.Tensor] | None = None
        if visions and takes_image_features(model, visions[0]):
            encoded = model.get_image_features(**concat_vision(visions, device), return_dict=True)
            fields = {name for name, value in encoded.items() if value is not None}
            pooled = encoded.pooler_output  # (I, T, D) or I tensors (T_i, D): one entry per distinct image
            if fields <= PLAIN_ENCODER_FIELDS and pooled is not None and len(pooled) == len(visions):
                self.features = pooled

    def inputs(self, images: list[int]) -> dict[str, Any]:
        """Model kwargs for a batch whose row b shows image `images[b]` (an index into the bank's visions)."""
        if self.features is None:
            return concat_vision([self.visions[i] for i in images], self.device)
        if isinstance(self.features, torch.Tensor):  # keep the encoder's layout: (B, T, D), rows in batch order
            rows = self.features[torch.as_tensor(images, device=self.features.device)]
        else:
            rows = [self.features[i] for i in images]
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=rows)}}
