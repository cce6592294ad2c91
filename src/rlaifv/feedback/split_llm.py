"""Divide, with a language model: the paper's two-call splitter on any chat LLM, a Hugging Face causal LM loaded
here (`LLMSplitter`) or one served behind OpenAI-compatible URLs (`ServedSplitter`, `splitter_model.kind: openai`).

RLAIF-V (REFERENCE 2) splits a response with two LLM calls: (a) extract the self-contained factual statements of a
question-answer pair as a list, opinions excluded; (b) rewrite those statements as general yes/no questions, one per
statement, keeping negations. Statements and questions are then paired by position.

Where this differs from the reference code, on purpose:

- a count mismatch between (a) and (b) is reported as BadInput with both counts, never truncated to the shorter list
  (the reference silently pairs the first min(n, m));
- an output that hit `max_new_tokens` before its end-of-sequence token is reported, not parsed: its last item may be
  cut mid-sentence;
- a response with no claims is BadInput ("no claims found"), so the caller quarantines it with a reason;
- call (b) sees the statements as a numbered list and answers with one, so the two lists stay aligned.

Two units of work (`unit`):

- "response" (the paper, the default): one call (a) per response, one call (b) per response;
- "sentence": one call (a) per sentence of the response (the whole response is still in the prompt, as context for
  pronouns), and one call (b) per sentence's statements. Claims come back in sentence order. This is how
  FActScore-style pipelines split long answers, and what lets a very small model split reliably: copying one
  sentence needs no memory of which sentence comes next. A sentence that yields no claim ("none") contributes
  nothing; any other failure in a sentence is the whole response's BadInput, naming the sentence at its end.

The prompt texts and the readers of the outputs are in `rlaifv.text.formats`; here they are constructor arguments: a
general chat model takes the defaults, a small task-specific splitter (the synthetic world's, `rlaifv.world.splitter`)
is trained and run with short ones. A model folder may carry how it was trained to be called in `splitter.json`
(prompt texts and unit); those settings are used unless the caller passes others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlaifv.records import BadInput
from rlaifv.text.formats import (
    DEFAULT_PROMPTS,
    QUESTIONS_PROMPT,
    NoClaims,
    Unit,
    load_settings,
    numbered,
    pair_claims,
    read_statements,
    response_sentences,
)
from rlaifv.text.rules import Claim, cut_words

if TYPE_CHECKING:
    from rlaifv.config import ClaimsConfig, EngineConfig

@dataclass
class _Job:
    """One call-(a) unit: a whole response or one of its sentences, and what became of it."""

    item: int  # index of the (instruction, response) item
    sentence: int | None  # index of the sentence in the response; None for unit "response"
    prompt: str
    statements: list[str] | None = None
    result: list[Claim] | BadInput | None = None


# ---------------------------------------------------------------- the splitter


class TwoCallSplitter:
    """The two calls and the reading of their outputs, whatever model writes the text: a subclass supplies
    `generate` (a local model, `LLMSplitter`; a served one, `ServedSplitter`)."""

    def __init__(self, unit: Unit | None, statements_prompt: str | None, questions_prompt: str | None,
                 max_new_tokens: int, max_words: int, saved: dict[str, str] | None = None) -> None:
        saved = saved or {}
        if max_new_tokens < 1 or max_words < 1:
            raise ValueError("max_new_tokens and max_words must be >= 1")
        self.unit: Unit = unit or saved.get("unit", "response")  # type: ignore[assignment]
        if self.unit not in DEFAULT_PROMPTS:
            raise ValueError(f"unit must be one of {tuple(DEFAULT_PROMPTS)}, got {self.unit!r}")
        self.statements_prompt = statements_prompt or saved.get("statements_prompt", DEFAULT_PROMPTS[self.unit])
        self.questions_prompt = questions_prompt or saved.get("questions_prompt", QUESTIONS_PROMPT)
        self.max_new_tokens, self.max_words = max_new_tokens, max_words

    def generate(self, prompts: list[str]) -> list[tuple[str, bool] | BadInput]:
        """(text, finished) per prompt -- finished: the model ended its answer before `max_new_tokens` -- or the
        BadInput of a prompt the model's server refused."""
        raise NotImplementedError

    # ------------------------------------------------------------ the two calls

    def statements_jobs(self, items: Sequence[tuple[str, str]]) -> list[_Job]:
        """Call (a)'s units with their prompts: one per non-empty response, or one per sentence of it."""
        jobs = []
        for i, (instruction, response) in enumerate(items):
            if not response or not response.strip():
                continue
            cut = cut_words(response, self.max_words)
            fields = {"instruction": instruction.strip(), "response": cut.strip()}
            if self.unit == "response":
                jobs.append(_Job(i, None, self.statements_prompt.format(**fields)))
                continue
            for k, sentence in enumerate(response_sentences(cut)):
                jobs.append(_Job(i, k, self.statements_prompt.format(**fields, sentence=sentence)))
        return jobs

    def questions_prompts(self, statements: Sequence[list[str]]) -> list[str]:
        """Call (b)'s prompt per unit: its statements as a numbered list."""
        return [self.questions_prompt.format(statements=numbered(s)) for s in statements]

    def split(self, items: Sequence[tuple[str, str]]) -> list[list[Claim] | BadInput]:
        """Per (instruction, response): its (statement, question) claims, or the BadInput saying why not."""
        jobs = self.statements_jobs(items)
        for job, answer in zip(jobs, self.generate([j.prompt for j in jobs])):
            try:
                job.statements = read_statements(*_answer(answer), self.max_new_tokens)
            except BadInput as exc:
                job.result = exc
        asking = [j for j in jobs if j.statements is not None]
        answers = self.generate(self.questions_prompts([j.statements for j in asking]))
        for job, answer in zip(asking, answers):
            try:
                job.result = pair_claims(job.statements, *_answer(answer), self.max_new_tokens)
            except BadInput as exc:
                job.result = exc
        by_item: dict[int, list[_Job]] = {}
        for job in jobs:
            by_item.setdefault(job.item, []).append(job)
        return [_assemble(by_item.get(i, [])) for i in range(len(items))]


class LLMSplitter(TwoCallSplitter):
    """The 'llm' choice of `ClaimsConfig.splitter` on a local Hugging Face chat causal LM: two rounds of batched
    generation per batch of responses.

    Greedy decoding at temperature 0 (deterministic); otherwise sampling at `temperature` with `top_p` (the paper:
    0.2 and 0.9), seeded per `split` call (engines.hf_chat).
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        max_words: int = 300,
        *,
        unit: Unit | None = None,
        statements_prompt: str | None = None,
        questions_prompt: str | None = None,
        top_p: float = 0.9,
        batch_size: int = 16,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> None:
        from rlaifv.engines.hf_chat import HFChat

        super().__init__(unit, statements_prompt, questions_prompt, max_new_tokens, max_words,
                         load_settings(model_path))
        self.chat = HFChat(model_path, device, dtype, max_new_tokens, temperature, top_p, batch_size,
                           trust_remote_code, seed)

    @classmethod
    def from_config(cls, cfg: ClaimsConfig, model_path: str | Path | None = None) -> LLMSplitter:
        """From the claims stage's config; `model_path` fills in an empty `splitter_model.path` (the world's)."""
        engine = cfg.splitter_model
        path = engine.path or model_path
        if not path:
            raise ValueError("claims.splitter_model.path is empty and no default splitter model was given")
        return cls(
            path, engine.device, engine.dtype, cfg.max_new_tokens, cfg.temperature, cfg.max_words,
            trust_remote_code=engine.trust_remote_code,
        )

    def generate(self, prompts: list[str]) -> list[tuple[str, bool]]:
        return self.chat.generate(prompts)


def _answer(answer: tuple[str, bool] | BadInput) -> tuple[str, bool]:
    if isinstance(answer, BadInput):
        raise answer
    return answer


class ServedSplitter(TwoCallSplitter):
    """The 'llm' splitter on a chat LLM served behind OpenAI-compatible URLs (`splitter_model.kind: openai`): every
    prompt of a call goes out at once (engines.openai_vlm), one text-only user turn each, with the server applying
    the model's chat template; each prompt's request is seeded from `seed` and its place in the call."""

    def __init__(self, engine: EngineConfig, max_new_tokens: int = 256, temperature: float = 0.0,
                 max_words: int = 300, *, unit: Unit | None = None, statements_prompt: str | None = None,
                 questions_prompt: str | None = None, top_p: float = 0.9, seed: int = 0) -> None:
        from rlaifv.engines.openai_vlm import OpenAIEngine

        super().__init__(unit, statements_prompt, questions_prompt, max_new_tokens, max_words)
        self.engine = OpenAIEngine(engine)
        self.temperature, self.top_p, self.seed = temperature, top_p, seed

    def generate(self, prompts: list[str]) -> list[tuple[str, bool] | BadInput]:
        return self.engine.chat(prompts, self.max_new_tokens, self.temperature, self.top_p, self.seed)


def _assemble(jobs: list[_Job]) -> list[Claim] | BadInput:
    """One response's claims from its units: the first real failure wins; sentences without claims are skipped."""
    if not jobs:
        return BadInput("empty response")
    claims: list[Claim] = []
    for job in jobs:
        if isinstance(job.result, NoClaims) and job.sentence is not None:
            continue
        if isinstance(job.result, BadInput):
            # the sentence goes last, so the reason keeps its kind (records.reason_kind) and summaries count
            # unparsable outputs together, not per sentence number
            if job.sentence is None:
                return job.result
            return type(job.result)(f"{job.result} (sentence {job.sentence + 1})")
        claims.extend(job.result or [])
    return claims or NoClaims("no claims found (no sentence yielded a claim)")
