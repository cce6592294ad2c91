"""Typed records that pipeline stages exchange: the data contracts, in one place.

Every stage reads and writes these records through the sharded Parquet store
(:mod:`rlaifv.store`). Defining them here gives one shape per row, one identity
rule per record (``key``, used to resume without losing or duplicating work)
and one Parquet mapping, written once in :class:`Record` rather than per class.
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
import typing
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, NamedTuple, Self

import pyarrow as pa

_ARROW_TYPES: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.binary(),
    dict: pa.string(),  # dict fields are stored as JSON text
}


class Column(NamedTuple):
    """How one dataclass field maps to one Parquet column."""

    name: str
    arrow_type: pa.DataType
    nullable: bool  # the field is annotated ``X | None``
    is_json: bool  # a dict field, stored as JSON text (heterogeneous dicts fit)
    is_list: bool = False  # a ``list[X]`` field: an Arrow list of X (X a scalar type, optionally ``| None``)
    items_nullable: bool = False  # a list field's items may be None (``list[X | None]``)


def _optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for ``X | None``, else (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner, True
    return hint, False


@functools.cache
def columns(cls: type[Record]) -> tuple[Column, ...]:
    """Column specs of a record class, derived from its field annotations.

    Deriving the Parquet schema from the annotations (instead of inferring it from
    each batch of rows) keeps every shard's schema identical, even when a shard
    happens to hold only ``None`` in a nullable float or bytes column, or only
    empty lists in a list column.
    """
    hints = typing.get_type_hints(cls)
    specs = []
    for f in fields(cls):  # type: ignore[arg-type]
        hint, nullable = _optional(hints[f.name])
        base = typing.get_origin(hint) or hint  # dict[str, Any] -> dict, list[int] -> list
        if base is list:
            item, items_nullable = _optional(typing.get_args(hint)[0])
            if item not in _ARROW_TYPES or item is dict:
                raise TypeError(f"{cls.__name__}.{f.name}: list items must be str, int, float, bool or bytes")
            specs.append(Column(f.name, pa.list_(_ARROW_TYPES[item]), nullable, False, True, items_nullable))
        else:
            specs.append(Column(f.name, _ARROW_TYPES[base], nullable, base is dict))
    return tuple(specs)


@functools.cache
def defaulted(cls: type) -> frozenset[str]:
    """The fields of a record class that have a default: added later, so older shards may lack their column."""
    return frozenset(f.name for f in fields(cls) if f.default is not MISSING)


class Record:
    """Shared behaviour of every record: identity, row mapping, Parquet schema.

    Subclasses are frozen, slotted dataclasses. They name the fields that form
    their identity in ``KEY_FIELDS``; the store reads only those columns to find
    which records are already done.
    """

    __slots__ = ()
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def key_of(cls, row: Mapping[str, Any]) -> str:
        """The key from the ``KEY_FIELDS`` of a row alone (no full record needed)."""
        return "/".join(str(row[name]) for name in cls.KEY_FIELDS)

    @property
    def key(self) -> str:
        """Deterministic, stable id of this record: what a resumed stage skips."""
        return self.key_of({name: getattr(self, name) for name in self.KEY_FIELDS})

    def to_row(self) -> dict[str, Any]:
        """A flat dict of Parquet-ready values (dict fields become JSON text).

        Raises ``ValueError`` on ``None`` in a field not annotated ``| None``, or
        in a list item not annotated ``X | None``: Arrow would store it as a null
        without complaint.
        """
        row = {}
        for col in columns(type(self)):
            value = getattr(self, col.name)
            if value is None and not col.nullable:
                raise ValueError(f"{type(self).__name__}.{col.name} is None")
            if col.is_list and value is not None:
                value = list(value)
                if not col.items_nullable and any(item is None for item in value):
                    raise ValueError(f"{type(self).__name__}.{col.name} holds None")
            row[col.name] = _dump_json(value) if col.is_json else value
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_row`; extra keys in ``row`` are ignored, and a column that a shard written before
        the field existed lacks takes the field's default."""
        kwargs = {}
        for col in columns(cls):
            if col.name not in row and col.name in defaulted(cls):
                continue
            value = row[col.name]
            kwargs[col.name] = json.loads(value) if col.is_json else value
        return cls(**kwargs)

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        """The Parquet schema shared by every shard of this record type."""
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in columns(cls)]
        )


def _dump_json(value: Any) -> str:
    # Sorted keys: the same dict always gives the same bytes on disk.
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Prompt(Record):
    """An image and a question: the input every later stage hangs off."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("prompt_id",)

    prompt_id: str  # stable id, unique within the data set
    image: str  # path to the image file, or "" when image_bytes holds it
    image_bytes: bytes | None  # encoded image when not referenced by path
    image_sha256: str  # hex digest of the encoded image: detects a changed file
    question: str  # the user turn shown with the image
    source: str  # data set / split the prompt came from
    meta: dict[str, Any]  # free-form provenance (stored as JSON)


@dataclass(frozen=True, slots=True)
class Candidate(Record):
    """One sampled response of the policy to a prompt, with how it was sampled."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("prompt_id", "sample_idx")

    prompt_id: str  # the Prompt this answers
    sample_idx: int  # index among the samples drawn for this prompt
    text: str  # the response
    n_tokens: int  # generated tokens (finish-length checks, stats)
    policy: str  # model that sampled it, as "name@revision"
    sampling: dict[str, Any]  # sampling parameters (temperature, top_p, ...), JSON
    seed: int  # RNG seed, so the sample can be reproduced


@dataclass(frozen=True, slots=True)
class Claim(Record):
    """An atomic statement split from a candidate and turned into a yes/no question."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("prompt_id", "sample_idx", "claim_idx")

    prompt_id: str  # the Prompt of the candidate
    sample_idx: int  # the Candidate this claim comes from
    claim_idx: int  # index of the claim within the candidate
    statement: str  # the atomic claim, as a declarative sentence
    question: str  # the claim as a yes/no question for the labeler
    # an existence claim asked beside a claim with details (`ClaimsConfig.existence_claims`): a "yes" counts as an
    # accepted claim, a "no" never lowers the score (the detailed claim already carries that error)
    support: bool = False


@dataclass(frozen=True, slots=True)
class Verdict(Record):
    """The labeler's judgement of one claim against the image.

    ``accepted`` is derived (``p_yes > p_no``, so a tie is a rejection); build it
    with :meth:`from_probs`. A stored value that disagrees raises, because an
    inconsistent verdict would silently change the preference scores.
    """

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("prompt_id", "sample_idx", "claim_idx")

    prompt_id: str  # the Prompt of the claim
    sample_idx: int  # the Candidate of the claim
    claim_idx: int  # the Claim judged
    p_yes: float  # labeler probability of "yes"
    p_no: float  # labeler probability of "no"
    accepted: bool  # p_yes > p_no; a tie is a rejection
    support: bool = False  # the claim's `support`: only its acceptance counts (feedback.pairs.score_candidates)

    def __post_init__(self) -> None:
        if self.accepted != (self.p_yes > self.p_no):
            raise ValueError(
                f"Verdict {self.key}: accepted={self.accepted} but "
                f"p_yes={self.p_yes} p_no={self.p_no}"
            )

    @classmethod
    def from_probs(
        cls, prompt_id: str, sample_idx: int, claim_idx: int, p_yes: float, p_no: float, support: bool = False
    ) -> Verdict:
        """A verdict whose ``accepted`` is computed, never passed in.

        Probabilities are coerced to ``float`` so numpy / torch scalars store cleanly.
        """
        p_yes, p_no = float(p_yes), float(p_no)
        return cls(prompt_id, sample_idx, claim_idx, p_yes, p_no, p_yes > p_no, support)


@dataclass(frozen=True, slots=True)
class Scored(Record):
    """A candidate's score from its claims' verdicts: fewer rejections is better."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("prompt_id", "sample_idx")

    prompt_id: str  # the Prompt of the candidate
    sample_idx: int  # the Candidate scored
    n_claims: int  # claims judged (support claims only where accepted)
    n_rejected: int  # claims the labeler rejected (never a support claim)
    score: float  # -n_rejected

    @classmethod
    def from_counts(
        cls, prompt_id: str, sample_idx: int, n_claims: int, n_rejected: int
    ) -> Scored:
        """A score computed as ``-n_rejected`` (RLAIF-V divide-and-conquer score)."""
        return cls(prompt_id, sample_idx, n_claims, n_rejected, float(-n_rejected))


@dataclass(frozen=True, slots=True)
class Pair(Record):
    """A preference pair for DPO: a better and a worse response to one prompt.

    The key hashes the two texts, so the same pair built twice gets the same key
    and a resumed pairing stage does not emit it again.
    """

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("prompt_id", "chosen", "rejected")

    prompt_id: str  # the Prompt both responses answer
    image: str  # image path (copied so training needs no join)
    question: str  # the question (copied so training needs no join)
    chosen: str  # preferred response
    rejected: str  # dispreferred response
    chosen_score: float  # Scored.score of chosen
    rejected_score: float  # Scored.score of rejected
    round: int  # iterative alignment round that produced the pair
    ref_chosen_logp: float | None  # reference-model log p(chosen), once computed
    ref_rejected_logp: float | None  # reference-model log p(rejected), once computed
    meta: dict[str, Any]  # provenance (sample indices, policy, ...), JSON

    @classmethod
    def key_of(cls, row: Mapping[str, Any]) -> str:
        text = f"{row['chosen']}\x00{row['rejected']}".encode()
        return f"{row['prompt_id']}/{hashlib.sha256(text).hexdigest()[:12]}"


@dataclass(frozen=True, slots=True)
class Quarantined(Record):
    """Bad input set aside with a reason, instead of being silently skipped.

    Its ``record_key`` counts as done for the stage, so a resumed run does not
    retry it forever; the reason and the offending row stay inspectable.
    """

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("stage", "record_key")

    stage: str  # the stage that rejected it
    record_key: str  # key of the offending record (``key`` is taken by the property)
    reason: str  # why it was rejected
    record: str  # JSON of the offending row / record


@dataclass(frozen=True, slots=True)
class Generation(Record):
    """A greedy evaluation response to one prompt."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("prompt_id",)

    prompt_id: str  # the Prompt answered
    text: str  # the response
    n_tokens: int  # generated tokens


@dataclass(frozen=True, slots=True)
class RefLogps(Record):
    """The reference model's summed response log-probs of one pair (keyed like the pair): what DPO's loss compares
    the policy with (logps.reference)."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("pair_key",)

    pair_key: str  # PreferenceExample.key / Pair.key
    chosen_logp: float  # sum of log p_ref over the chosen response's tokens
    rejected_logp: float  # the same for the rejected response
    chosen_tokens: int  # chosen response length in tokens (the policy must tokenize it the same way)
    rejected_tokens: int  # rejected response length in tokens


@dataclass(frozen=True, slots=True)
class BonRow(Record):
    """Best-of-N for one prompt (infer.bon): its N candidates, their scores and the chosen one. Lists are in sample
    order; a candidate that could not be scored has None log-probs and reward and a non-empty reason."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("prompt_id",)

    prompt_id: str  # the Prompt answered
    question: str  # its question (copied so the export needs no join)
    image: str  # its image path ("" when the prompt holds the bytes)
    texts: list[str]  # the N sampled answers
    policy_logps: list[float | None]  # sum over each answer's tokens of log pi
    ref_logps: list[float | None]  # the same under pi_ref
    n_tokens: list[int]  # tokens scored per answer (end-of-turn included); 0 where it has none
    rewards: list[float | None]  # r per answer (`reward_kind`)
    reasons: list[str]  # "" = scored; else why the answer was set aside (never chosen)
    chosen_idx: int  # the argmax of rewards, lowest index on ties
    chosen_text: str  # texts[chosen_idx]
    chosen_reward: float  # rewards[chosen_idx]
    reward_kind: str  # 'mean' (divided by n_tokens) or 'sum'
    beta: float  # scale of every reward
    sampler: str  # model that drew the answers


class ResponseScore(NamedTuple):
    """One answer as a model scored it (best-of-N, reference log-probs), locally or on a server."""

    logp: float | None  # sum of log p(token) over the answer's tokens; None when set aside
    ids: tuple[int, ...]  # the answer's token ids as the model reads them, end-of-turn included
    reason: str  # "" when scored, else why the answer was set aside (empty, too long, refused by the server)


def reason_kind(reason: str) -> str:
    """The kind of a quarantine reason: what every summary counts reasons by.

    Reasons are written "<kind>: <detail>" or "<kind> (<detail>)" ("image file not found: /x.png", "labeler returned
    non-finite probabilities (nan, nan)"), so the kind is the text before the first ": " or " (", at most 80
    characters: reasons that differ only in a path, a count or a quoted response fall together, and a URL's
    "http://" stays whole.
    """
    kind = reason.split(": ", 1)[0].split(" (", 1)[0].strip()
    return (kind or reason.strip())[:80]


def reason_counts(reasons: Iterable[str]) -> dict[str, int]:
    """How many reasons of each kind (`reason_kind`), most frequent first."""
    return dict(Counter(reason_kind(r) for r in reasons).most_common())


class BadInput(ValueError):
    """A record a stage cannot process (missing image, empty response, unparsable model output, ...).

    Stages catch it and quarantine the record with ``str(exc)`` as the reason, so a bad row never stops a long run
    and is never dropped silently.
    """
