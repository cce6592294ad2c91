"""The engine interface: what the stages ask of a model, in their own terms, whichever engine computes it.

Two engines keep this contract: engines.hf.HFEngine (a transformers model in this process; engines.hf_chat.HFChat
for text-only chat models) and engines.openai_vlm.OpenAIEngine (vLLM / SGLang / any OpenAI-compatible server). A
stage written against `VLM` or `TextLLM` runs on either; tests/test_engine_interface.py checks that both engines
keep every method with the same parameters. Importing this module loads no torch.

Response log-probs (DPO's reference pass, best-of-N's rewards) are computed by logps.packed for local models, which
the trainer's gradient step shares, and by `OpenAIEngine.response_logps` on servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL import Image

    from rlaifv.records import BadInput

# Spellings of the verdict tokens; the ones that are a single token in the tokenizer are summed (REFERENCE 3).
YES_VARIANTS = ("yes", "Yes", " yes", " Yes", "YES", " YES")
NO_VARIANTS = ("no", "No", " no", " No", "NO", " NO")

Answer = tuple[str, int]  # an answer's text and its generated tokens before the end of the turn
YesNo = tuple[float, float]  # (P(yes), P(no)) of the first answer token, each summed over its spellings


def first_answers(samples: list[list[Answer] | BadInput]) -> list[Answer]:
    """`generate` from `sample(..., n=1)`: each prompt's one answer; a prompt set aside raises its BadInput, since
    one answer per prompt leaves no row to quarantine."""
    out = []
    for rows in samples:
        if not isinstance(rows, list):
            raise rows
        out.append(rows[0])
    return out


@dataclass(frozen=True)
class Sampling:
    """One decoding setting, shared by every sample of a prompt."""

    max_new_tokens: int = 96  # answer length cap, in tokens
    do_sample: bool = False  # False: greedy
    temperature: float = 1.0  # used when do_sample
    top_p: float = 1.0  # nucleus mass kept when do_sample (1.0: all)


@runtime_checkable
class VLM(Protocol):
    """A vision-language model, as sampling, judging and evaluation use it. A list entry is BadInput where the
    engine refused that one item (a server's 4xx, missing logprobs): the stage quarantines it and goes on."""

    path: str  # the model's name as stored records give it (a folder, or a served model's name)

    def sample(self, images: list[Image.Image], questions: list[str], n: int, sampling: Sampling,
               seed: int | None = None) -> list[list[Answer] | BadInput]:
        """n answers per (image, question), one decoding setting for all; seeded: the same call, the same answers."""
        ...

    def generate(self, images: list[Image.Image], questions: list[str], sampling: Sampling) -> list[Answer]:
        """One answer per (image, question)."""
        ...

    def yes_no(self, images: list[Image.Image], questions: list[str]) -> list[YesNo | BadInput]:
        """(P(yes), P(no)) of the answer to each (image, question)."""
        ...

    def yes_no_shared(self, groups: list[tuple[Image.Image, list[str]]], questions_per_pack: int = 64,
                      packs_per_forward: int = 8) -> list[list[YesNo | BadInput]]:
        """`yes_no` for many questions per image, each image encoded once where the engine can."""
        ...

    def fast_paths(self) -> dict[str, dict]:
        """Which fast paths ran on this engine's model and which fell back to the exact path (engines.fastpath)."""
        ...


class LoadedOnUse:
    """A VLM whose model loads when a stage first asks it something, so a resumed stage that finds every record
    stored skips the load (for a 7B model, a minute and its GPU memory; for the world, a bootstrap check).
    `load` returns the engine; it runs at most once."""

    def __init__(self, load: Callable[[], VLM]) -> None:
        self._load, self._engine = load, None

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> VLM:
        if self._engine is None:
            self._engine = self._load()
        return self._engine

    @property
    def path(self) -> str:
        return self.engine.path

    def sample(self, images: list[Image.Image], questions: list[str], n: int, sampling: Sampling,
               seed: int | None = None) -> list[list[Answer] | BadInput]:
        return self.engine.sample(images, questions, n, sampling, seed)

    def generate(self, images: list[Image.Image], questions: list[str], sampling: Sampling) -> list[Answer]:
        return self.engine.generate(images, questions, sampling)

    def yes_no(self, images: list[Image.Image], questions: list[str]) -> list[YesNo | BadInput]:
        return self.engine.yes_no(images, questions)

    def yes_no_shared(self, groups: list[tuple[Image.Image, list[str]]], questions_per_pack: int = 64,
                      packs_per_forward: int = 8) -> list[list[YesNo | BadInput]]:
        return self.engine.yes_no_shared(groups, questions_per_pack, packs_per_forward)

    def fast_paths(self) -> dict[str, dict]:
        """The loaded engine's; none when it never loaded."""
        return self.engine.fast_paths() if self.loaded else {}

@runtime_checkable
class TextLLM(Protocol):
    """A text-only chat model: the claim splitter's and the benchmark judges' and extractors' model."""

    path: str

    def chat(self, prompts: list[str], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None) -> list[tuple[str, bool] | BadInput]:
        """(answer, finished before max_tokens) per user turn, in the model's chat template; greedy at temperature 0,
        else sampled with `top_p` and seeded from `seed`."""
        ...
