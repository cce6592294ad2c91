"""Token ids of one preference pair: the prompt with its image tokens, the chosen and the rejected response.

The processor expands the prompt (it alone knows how many tokens an image becomes), once per pair. Each response's
ids are what the tokenizer gives for the full conversation after the prompt's ids -- the tokens the model sees when
it reads prompt + response as one text -- so the template's end-of-turn token (EOS) is part of the response and is
learned too. A pair whose prompt + longer response exceeds the model's context (or `max_length`) raises BadInput:
it is quarantined, never truncated, because a cut response is a different response than the one that was judged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

import torch
from PIL import Image

from rlaifv.engines.family import vision_of
from rlaifv.preferences import PreferenceExample
from rlaifv.records import BadInput


@dataclass
class EncodedPair:
    """Model inputs of one pair, ready to pack."""

    key: str
    prompt_ids: list[int]  # the prompt with the image placeholder expanded to the image's tokens
    chosen_ids: list[int]  # the chosen response's tokens, end-of-turn included
    rejected_ids: list[int]  # the rejected response's tokens
    vision: dict[str, torch.Tensor]  # what the processor says of the image, e.g. pixel_values (1, C, H, W)


def context_length(config: Any) -> int | None:
    """Longest sequence the model's positions cover (text config's max_position_embeddings), if it says."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


class PairEncoder:
    """Encodes examples with one processor; `limit` is the longest allowed prompt + response in tokens."""

    def __init__(self, processor: Any, limit: int | None) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.limit = limit

    def texts(self, example: PreferenceExample) -> tuple[str, str, str]:
        """(prompt, prompt + chosen, prompt + rejected) as the model reads them."""
        prompt, (chosen, rejected) = self.rendered(example, (example.chosen, example.rejected))
        return prompt, chosen, rejected

    def rendered(self, example: PreferenceExample, answers: Sequence[str]) -> tuple[str, list[str]]:
        """(prompt, [prompt + answer for each answer]) as the model reads them: the chat template renders the prompt
        once and each answer once (best-of-N scores many answers to one prompt)."""
        if example.formatted:
            prompt = example.prompt.question
            return prompt, [prompt + answer for answer in answers]
        messages = example.messages or [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example.prompt.question}]}
        ]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        turns = ({"role": "assistant", "content": [{"type": "text", "text": answer}]} for answer in answers)
        return prompt, [self.processor.apply_chat_template([*messages, turn]) for turn in turns]

    def __call__(self, example: PreferenceExample, image: Image.Image) -> EncodedPair:
        prompt_text, chosen_text, rejected_text = self.texts(example)
        try:
            enc = self.processor(text=[prompt_text], images=[image], return_tensors="pt")
        except ValueError as exc:  # e.g. a formatted prompt without the image token
            raise BadInput(f"processor rejected the prompt: {exc}") from None
        prompt_ids = enc["input_ids"][0].tolist()
        raw_prompt = self.tokenizer(prompt_text)["input_ids"]
        chosen = self.response_ids(raw_prompt, prompt_text, chosen_text)
        rejected = self.response_ids(raw_prompt, prompt_text, rejected_text)
        for name, ids in (("chosen", chosen), ("rejected", rejected)):
            if not ids:
                raise BadInput(f"empty response: {name} has no tokens")
        longest = len(prompt_ids) + max(len(chosen), len(rejected))
        if self.limit is not None and longest > self.limit:
            raise BadInput(f"too long: prompt {len(prompt_ids)} + longest response {max(len(chosen), len(rejected))}"
                           f" = {longest} tokens > {self.limit} (the model's context or max_length)")
        return EncodedPair(example.key, prompt_ids, chosen, rejected, vision_of(enc))

    def response_ids(self, raw_prompt: list[int], prompt_text: str, full_text: str) -> list[int]:
        """Ids of the full text after the prompt's; the response alone when the tokenizer merges across the seam."""
        full = self.tokenizer(full_text)["input_ids"]
        if full[: len(raw_prompt)] == raw_prompt:
            return full[len(raw_prompt) :]
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template renders the prompt differently once an assistant turn follows it; "
                             "pass TRL rows with plain-text prompt and responses instead")
        return self.tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]


T = TypeVar("T")
R = TypeVar("R")


def ahead(items: Iterable[T], fn: Callable[[T], R], background: bool = True) -> Iterator[R]:
    """fn(item) for every item, in order, each computed on a background thread while the caller uses the previous.

    Encoding a batch (image decoding, the processor, the tokenizer) is host work that otherwise leaves the GPU idle
    at the start of every step: with this the host encodes batch k+1 while the device runs batch k. One result at
    most waits ahead; an exception raised by fn is raised here, where its result is taken, in order. With
    `background` False it is a plain map (on a CPU the thread would compete with torch's own threads).
    """
    if not background:
        yield from map(fn, items)
        return
    it = iter(items)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlaifv-encode")
    try:
        upcoming = [pool.submit(fn, item) for item in islice(it, 1)]
        while upcoming:
            current = upcoming.pop()
            upcoming = [pool.submit(fn, item) for item in islice(it, 1)]  # queued behind `current` on the worker
            yield current.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
