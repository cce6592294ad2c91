"""Model compute on a local Hugging Face VLM (`AutoModelForImageTextToText` + `AutoProcessor`).

Stages talk to this engine in plain terms -- images, questions, texts, probabilities -- so the same stage runs on any
HF VLM the processor's chat template supports. `trust_remote_code` stays off unless the caller asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

# Spellings of the verdict tokens; the ones that are a single token in the tokenizer are summed (REFERENCE 3).
YES_VARIANTS = ("yes", "Yes", " yes", " Yes", "YES", " YES")
NO_VARIANTS = ("no", "No", " no", " No", "NO", " NO")


@dataclass(frozen=True)
class Sampling:
    """One decoding setting, shared by every sample of a prompt."""

    max_new_tokens: int = 96
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


def single_token_ids(tokenizer, variants: tuple[str, ...]) -> list[int]:
    """Ids of the variants that encode to exactly one token (a two-token ' yes' cannot be read from one step)."""
    ids = []
    for v in variants:
        enc = tokenizer(v, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    return ids


class HFEngine:
    """A VLM loaded from a folder (or hub id), in eval mode, with a left-padding processor for batched decoding."""

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.path = str(path)
        self.device = torch.device(device)
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self.yes_ids = single_token_ids(self.tokenizer, YES_VARIANTS)
        self.no_ids = single_token_ids(self.tokenizer, NO_VARIANTS)
        if not self.yes_ids or not self.no_ids:
            raise ValueError(
                f"{path}: the tokenizer has no single-token spelling of yes/no among {YES_VARIANTS + NO_VARIANTS}; "
                "it cannot be used as a yes/no labeler"
            )

    def prompt_text(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def _inputs(self, images: list[Image.Image], questions: list[str]) -> dict[str, torch.Tensor]:
        texts = [self.prompt_text(q) for q in questions]
        enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.no_grad()
    def generate(self, images: list[Image.Image], questions: list[str], sampling: Sampling) -> list[tuple[str, int]]:
        """One response per (image, question): (text, number of generated tokens before EOS)."""
        enc = self._inputs(images, questions)
        kwargs = {"max_new_tokens": sampling.max_new_tokens, "do_sample": sampling.do_sample}
        if sampling.do_sample:
            kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p}
        out = self.model.generate(**enc, **kwargs)  # (B, T_prompt + T_new)
        new = out[:, enc["input_ids"].shape[1] :]  # (B, T_new)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        results = []
        for row in new.tolist():
            n = next((i for i, t in enumerate(row) if t in (eos, pad)), len(row))
            results.append((self.tokenizer.decode(row[:n], skip_special_tokens=True).strip(), n))
        return results

    @torch.no_grad()
    def yes_no(self, images: list[Image.Image], questions: list[str]) -> list[tuple[float, float]]:
        """(P_yes, P_no) of the next token after each question: one forward, no free text."""
        enc = self._inputs(images, questions)
        # (B, V): left padding puts every prompt's end last; only that position goes through the LM head
        logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :]
        probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
        p_yes = probs[:, self.yes_ids].sum(-1)  # (B,)
        p_no = probs[:, self.no_ids].sum(-1)  # (B,)
        return list(zip(p_yes.tolist(), p_no.tolist()))
