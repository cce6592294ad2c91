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
  nothing; any other failure in a sentence is the whole response's BadInput, naming the sentence.

The prompt texts are module constants and constructor arguments: a general chat model takes the defaults, a small
task-specific splitter (the synthetic world's, `rlaifv.world.splitter`) is trained and run with short ones. A model
folder may carry how it was trained to be called in `splitter.json` (prompt texts and unit); those settings are used
unless the caller passes others.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rlaifv.feedback.split_rules import BULLET_RE, Claim, cut_words, sentences
from rlaifv.records import BadInput

if TYPE_CHECKING:
    from rlaifv.config import ClaimsConfig, EngineConfig

Unit = Literal["response", "sentence"]

# Call (a), unit "response". Fields: {instruction}, {response} (cut to max_words). Asks for the single word "none"
# when the answer asserts nothing, so that "no claims" and "unreadable output" stay distinguishable.
STATEMENTS_PROMPT = (
    "Below is a question about an image and an answer to it.\n\n"
    "Question: {instruction}\n"
    "Answer: {response}\n\n"
    "List every factual claim that the answer makes, as short self-contained statements: one statement per line, "
    'numbered "1.", "2.", ... Replace pronouns with the things they refer to, so that each statement can be '
    "understood on its own, and split statements about several objects into one statement per object. Leave out "
    "opinions, guesses and feelings. If the answer makes no factual claim, reply with the single word: none"
)
# Call (a), unit "sentence". Fields: {instruction}, {response} (the context) and {sentence} (the one to split).
SENTENCE_STATEMENTS_PROMPT = (
    "Below is a question about an image, an answer to it, and one sentence of that answer.\n\n"
    "Question: {instruction}\n"
    "Answer: {response}\n"
    "Sentence: {sentence}\n\n"
    "List every factual claim that this sentence makes, as short self-contained statements: one statement per "
    'line, numbered "1.", "2.", ... Replace pronouns with the things they refer to (the answer tells you what they '
    "are), and split statements about several objects into one statement per object. Leave out opinions, guesses "
    "and feelings. If the sentence makes no factual claim, reply with the single word: none"
)
# Call (b). Field: {statements}, call (a)'s statements as a numbered list. Negations kept, so "yes" always means
# "the claim holds".
QUESTIONS_PROMPT = (
    "Rewrite each statement below as a general yes/no question whose answer is yes exactly when the statement is "
    'true. Keep negations ("The cup is not red." becomes "Is the cup not red?"). Give exactly one question per '
    "statement, numbered like the statements, one question per line.\n\n"
    "Statements:\n{statements}"
)
DEFAULT_PROMPTS: dict[str, str] = {"response": STATEMENTS_PROMPT, "sentence": SENTENCE_STATEMENTS_PROMPT}
NO_CLAIMS = "none"
SETTINGS_FILE = "splitter.json"  # {"unit": ..., "statements_prompt": ..., "questions_prompt": ...} beside a model

_SUFFIX_RE = re.compile(r"\s*\(?(?:please\s+)?answer\s+(?:with\s+)?(?:yes\s+or\s+no|yes/no)\.?\)?\s*$", re.IGNORECASE)
_DTYPES = ("float32", "bfloat16", "float16")


class NoClaims(BadInput):
    """The splitter found nothing to check: fatal for a response, nothing to worry about for one sentence."""


# ---------------------------------------------------------------- text in, text out


def parse_bullets(text: str) -> list[str]:
    """The items of a list in a model's output, in order.

    Accepts "-", "*", "•", "1.", "1)" and "(1)" markers with any surrounding spaces; drops lines without a marker
    (headers like "Here are the statements:", trailing remarks), empty lines, empty items, markdown rules ("---")
    and marked headers ("**Statements:**"). A line that is not an item is never merged into one, so a model that
    drifts out of the format shows up as a count mismatch rather than as a silently wrong claim.
    """
    items = []
    for line in text.splitlines():
        m = BULLET_RE.match(line)
        if not m:
            continue
        item = line[m.end():].strip().strip("*_").strip()
        if item and not item.endswith(":") and any(ch.isalnum() for ch in item):
            items.append(item)
    return items


def numbered(items: Sequence[str]) -> str:
    """A numbered list, one item per line ("1. a\\n2. b"): how statements are shown to call (b) and how the world's
    splitter answers. Numbers give every line an anchor that the next list can align to."""
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def response_sentences(response: str) -> list[str]:
    """The response's sentences, terminators kept and list markers dropped: the units of `unit="sentence"`."""
    return [body + terminator for body, terminator in sentences(response)]


def strip_suffix(question: str) -> str:
    """Drop an "Answer yes or no." the model may add: the caller appends the configured suffix itself."""
    return _SUFFIX_RE.sub("", question).strip()


def read_statements(text: str, finished: bool, max_new_tokens: int) -> list[str]:
    """Statements from call (a)'s output; NoClaims for "none" or nothing, BadInput when it cannot be read."""
    if not finished:
        raise BadInput(f"statement output cut at max_new_tokens={max_new_tokens}: {text[-80:]!r}")
    stripped = text.strip()
    items = parse_bullets(stripped)
    if stripped.lower().strip(".! ") == NO_CLAIMS or [i.lower().strip(".! ") for i in items] == [NO_CLAIMS]:
        raise NoClaims("no claims found (the splitter answered 'none')")
    if not items:
        if not stripped:
            raise NoClaims("no claims found (empty statement output)")
        raise BadInput(f"unparsable statement output (no list): {stripped[:120]!r}")
    return items


def pair_claims(statements: list[str], text: str, finished: bool, max_new_tokens: int) -> list[Claim]:
    """Pair call (a)'s statements with call (b)'s questions by position; any count mismatch is BadInput."""
    if not finished:
        raise BadInput(f"question output cut at max_new_tokens={max_new_tokens}: {text[-80:]!r}")
    questions = [strip_suffix(q) for q in parse_bullets(text)]
    if len(questions) != len(statements):
        raise BadInput(
            f"statement/question count mismatch: {len(statements)} statements, {len(questions)} questions "
            f"(question output: {text.strip()[:120]!r})"
        )
    return list(zip(statements, questions))


def load_settings(path: str | Path) -> dict[str, str]:
    """How a model folder's splitter was trained to be called (`SETTINGS_FILE`), or {} (a hub id, a chat model)."""
    file = Path(path) / SETTINGS_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


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
    0.2 and 0.9), seeded per `split` call. Prompts are left-padded so every row's next token sits in the last column.
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
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if batch_size < 1 or temperature < 0:
            raise ValueError("batch_size must be >= 1 and temperature >= 0")
        super().__init__(unit, statements_prompt, questions_prompt, max_new_tokens, max_words,
                         load_settings(model_path))
        self.temperature, self.top_p, self.batch_size, self.seed = temperature, top_p, batch_size, seed
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{model_path}: the tokenizer has no chat template; the splitter needs a chat model")
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self.eos_ids = self._eos_ids()

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

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids]) - {None}
        return ids | {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else ids

    # ------------------------------------------------------------ generation

    def chat_text(self, prompt: str) -> str:
        """One user turn plus the assistant's generation prompt, in the model's own chat template."""
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, prompts: list[str]) -> list[tuple[str, bool]]:
        """(text, finished) per prompt; finished = the model ended its answer before `max_new_tokens`.

        Prompts are batched in order of length, so a batch pads little, and returned in the caller's order.
        """
        import torch

        if not prompts:
            return []
        texts = [self.chat_text(p) for p in prompts]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        out: list[tuple[str, bool]] = [("", False)] * len(texts)
        if self.temperature > 0:
            torch.manual_seed(self.seed)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            for i, result in zip(rows, self._generate_batch([texts[i] for i in rows])):
                out[i] = result
        return out

    def _generate_batch(self, texts: list[str]) -> list[tuple[str, bool]]:
        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = {"do_sample": False}
        if self.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        with torch.no_grad():
            seqs = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
            )  # (B, T_prompt + T_new)
        new = seqs[:, enc["input_ids"].shape[1] :]  # (B, T_new)
        finished = [any(t in self.eos_ids for t in row) for row in new.tolist()]
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return list(zip(decoded, finished))

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
            where = "" if job.sentence is None else f"sentence {job.sentence + 1}: "
            return type(job.result)(f"{where}{job.result}")
        claims.extend(job.result or [])
    return claims or NoClaims("no claims found (no sentence yielded a claim)")


__all__ = [
    "DEFAULT_PROMPTS", "NO_CLAIMS", "QUESTIONS_PROMPT", "SENTENCE_STATEMENTS_PROMPT", "SETTINGS_FILE",
    "STATEMENTS_PROMPT", "LLMSplitter", "NoClaims", "Unit", "load_settings", "numbered", "pair_claims",
    "parse_bullets", "read_statements", "response_sentences", "strip_suffix",
]
