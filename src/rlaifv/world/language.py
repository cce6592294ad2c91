"""The world's small English: descriptions, yes/no questions, and a parser that reads descriptions back.

Descriptions say one object per sentence in varied forms ("There is a small red fork on the left.", "In the center,
there is a blue cup."). Yes/no questions ask about one atomic fact: existence, color, size or position.

Captions used to train the base policy are *noisy* the way web and LLM-written captions are: after an object, the
captioner adds its usual partner even when it is absent ("... a fork." -> "Also, there is a knife."), sometimes
writes an object's typical color instead of its real one, and now and then forgets an object.
The parser maps any text (a policy's output included) back to mentions, which is how world metrics stay exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rlaifv.world.scenes import (
    CATEGORIES,
    COLORS,
    N_CELLS,
    PARTNER,
    SIZES,
    TYPICAL_COLOR,
    Scene,
    WorldObject,
)

# Describe-the-image instructions, in the spirit of Object HalBench's eight prompts.
DESCRIBE_INSTRUCTIONS: tuple[str, ...] = (
    "Describe this image in detail.",
    "What do you see in this picture?",
    "Provide a thorough description of the image.",
    "Tell me what is in this image.",
    "Write a detailed description of the picture.",
    "What objects are in this image? Describe them.",
    "Give a careful description of everything in the image.",
    "Explain what this image contains.",
)
YES_NO_SUFFIX = "Answer yes or no."


def instruction_for(index: int) -> str:
    """Scene i of a split is asked the i-th describe instruction, cycling: every instruction is used equally."""
    return DESCRIBE_INSTRUCTIONS[index % len(DESCRIBE_INSTRUCTIONS)]


# How each cell is said in a sentence; each phrase maps to exactly one cell, so a position claim is exact.
POSITION_PHRASES: tuple[str, ...] = (
    "in the top left corner", "at the top", "in the top right corner",
    "on the left", "in the center", "on the right",
    "in the bottom left corner", "at the bottom", "in the bottom right corner",
)
# The place words of each cell's phrase ("in the top left corner" -> top, left); vision alignment adds them to a
# cell's features so a position can be found by content.
CELL_WORDS: tuple[tuple[str, ...], ...] = tuple(
    tuple(w for w in phrase.split() if w in ("top", "bottom", "left", "right", "center")) for phrase in POSITION_PHRASES
)
SIZE_SYNONYMS: dict[str, str] = {"small": "small", "little": "small", "large": "large", "big": "large"}


class CaptionNoise(BaseModel):
    """How the world's captioner errs; the base policy learns these habits from its captions.

    The added partner sentence always opens the same way ("Also, there is a knife on the left."), as real captions
    tack on an afterthought, so the habit rests on one first token (with the real objects' four sentence forms it
    was split four ways and followed or not by training noise). It follows the object that suggested it: placed
    after all real objects instead, its alternative was ending the caption, and DPO against it also taught the
    policy to end before its last real object. The captioner always adds it (1.0): greedy decoding follows a habit
    only part of the time, and at 0.9 too rarely once placed mid-caption. The measurements behind each choice are
    in benchmarks/RESULTS.md. Sampling at temperature 0.7 still leaves it
    out now and then, which gives the feedback pairs; and no real object's sentence starts with "Also", so learning
    to leave it out does not teach to drop them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    partner_hallucination_prob: float = Field(
        1.0, ge=0, le=1, description="chance to add an absent partner of a present object (where `partner_placement` "
                                     "says)"
    )
    partner_form: Literal["also", "varied"] = Field(
        "also", description="how an added partner is said: always 'Also, there is ...', or in the real objects' "
                            "varied forms (the habit then hangs on training noise; see above)"
    )
    typical_color_prob: float = Field(
        0.2, ge=0, le=1, description="chance to write a category's typical color instead of the real one"
    )
    omission_prob: float = Field(0.04, ge=0, le=1, description="chance to forget a real object")
    size_mention_prob: float = Field(0.6, ge=0, le=1, description="chance that a sentence states the size")
    position_mention_prob: float = Field(0.85, ge=0, le=1, description="chance that a sentence states the position")
    partner_placement: Literal["end", "after_source"] = Field(
        "after_source", description="where an added partner goes: right after the object that suggested it (leaving "
                                    "it out then does not mean ending the caption sooner), or after all real objects"
    )


@dataclass(frozen=True, slots=True)
class Mention:
    """An object as a text states it; None where the text does not say."""

    category: str
    color: str | None = None
    size: str | None = None
    cell: int | None = None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(m: Mention, rng: np.random.Generator) -> str:
    words = []
    if m.size is not None:
        words.append(m.size if rng.random() < 0.7 else {"small": "little", "large": "big"}[m.size])
    if m.color is not None:
        words.append(m.color)
    words.append(m.category)
    return f"{_article(words[0])} {' '.join(words)}"


def sentence(m: Mention, rng: np.random.Generator) -> str:
    """One sentence about one object, in one of several forms."""
    np_ = noun_phrase(m, rng)
    if m.cell is None:
        forms = (f"There is {np_}.", f"I can see {np_}.", f"The image also shows {np_}.")
    else:
        pos = POSITION_PHRASES[m.cell]
        forms = (
            f"There is {np_} {pos}.",
            f"{np_[0].upper()}{np_[1:]} is {pos}.",
            f"I can see {np_} {pos}.",
            f"{pos[0].upper()}{pos[1:]}, there is {np_}.",
        )
    return forms[int(rng.integers(len(forms)))]


def afterthought(m: Mention, rng: np.random.Generator) -> str:
    """The captioner's added sentence about an object it expects but does not see: "Also, there is a knife."."""
    tail = f" {POSITION_PHRASES[m.cell]}" if m.cell is not None else ""
    return f"Also, there is {noun_phrase(m, rng)}{tail}."


def describe(mentions: list[Mention], rng: np.random.Generator) -> str:
    if not mentions:
        return "The image is empty."
    return " ".join(sentence(m, rng) for m in mentions)


def true_mentions(scene: Scene) -> list[Mention]:
    """Every object with every attribute, in reading order: a perfect description's content."""
    return [Mention(o.category, o.color, o.size, o.cell) for o in scene.objects]


def noisy_caption(scene: Scene, rng: np.random.Generator, noise: CaptionNoise = CaptionNoise()) -> str:
    """A training caption with the captioner's habits (see module docstring)."""
    said: list[tuple[Mention, bool]] = []  # (mention, True for an added absent partner)
    for obj in scene.objects:
        if rng.random() < noise.omission_prob and len(scene.objects) > 1:
            continue
        color = TYPICAL_COLOR[obj.category] if rng.random() < noise.typical_color_prob else obj.color
        said.append((_with_optional_attrs(obj.category, color, obj.size, obj.cell, rng, noise), False))
    free_cells = [c for c in range(N_CELLS) if all(o.cell != c for o in scene.objects)]
    for obj in scene.objects:
        partner = PARTNER.get(obj.category)
        if partner is None or partner in scene.categories or rng.random() >= noise.partner_hallucination_prob:
            continue
        if any(m.category == partner for m, _ in said) or not free_cells:
            continue
        color = TYPICAL_COLOR[partner] if rng.random() < 0.5 else list(COLORS)[int(rng.integers(len(COLORS)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        cell = free_cells.pop(int(rng.integers(len(free_cells))))
        added = (_with_optional_attrs(partner, color, size, cell, rng, noise), True)
        source = next((i for i, (m, _) in enumerate(said) if m.category == obj.category), None)
        if noise.partner_placement == "after_source" and source is not None:
            said.insert(source + 1, added)
        else:
            said.append(added)
    if not said:
        return describe([], rng)
    also = noise.partner_form == "also"
    return " ".join(afterthought(m, rng) if is_added and also else sentence(m, rng) for m, is_added in said)


def _with_optional_attrs(category, color, size, cell, rng, noise: CaptionNoise) -> Mention:
    return Mention(
        category,
        color,
        size if rng.random() < noise.size_mention_prob else None,
        cell if rng.random() < noise.position_mention_prob else None,
    )


# ---------------------------------------------------------------- yes/no questions


@dataclass(frozen=True, slots=True)
class YesNoQuestion:
    """A yes/no question with its exact answer.

    `claim` is what the question asserts (a category and the attributes it names); the answer is whether the scene
    makes that claim true. `kind` says what it probes, `hard` marks hard negatives.
    """

    question: str
    answer: bool
    kind: str  # one of QUESTION_KINDS
    hard: bool  # a false claim that the co-occurrence prior or a near miss makes tempting
    claim: Mention | None = None


# "claim" questions assert a whole object with several attributes, the way a response's sentence does once the
# claim splitter has turned it into a question ("Is there a small red fork on the left?").
QUESTION_KINDS: tuple[str, ...] = ("existence", "color", "size", "position", "claim")


def attribute_checks(scene: Scene, mention: Mention) -> list[bool]:
    """For a mention of a present object, one entry per attribute it states: True where the scene agrees."""
    obj = scene.object_of(mention.category)
    if obj is None:
        return []
    pairs = ((mention.color, obj.color), (mention.size, obj.size), (mention.cell, obj.cell))
    return [said == truth for said, truth in pairs if said is not None]


def claim_holds(scene: Scene, mention: Mention) -> bool:
    """True iff the scene has the mentioned category with every attribute the mention states."""
    return mention.category in scene.categories and all(attribute_checks(scene, mention))


def existence_question(category: str, rng: np.random.Generator) -> str:
    forms = (
        f"Is there {_article(category)} {category} in the image?",
        f"Is there {_article(category)} {category}?",
        f"Does the image contain {_article(category)} {category}?",
    )
    return forms[int(rng.integers(len(forms)))]


def attribute_question(category: str, kind: str, value: str | int) -> str:
    if kind == "color" or kind == "size":
        return f"Is the {category} {value}?"
    if kind == "position":
        return f"Is the {category} {POSITION_PHRASES[int(value)]}?"
    raise ValueError(f"unknown attribute kind {kind!r}")


def claim_question(m: Mention, rng: np.random.Generator) -> str:
    """A whole-object claim as a question, in the forms the rule splitter gives world sentences."""
    np_ = noun_phrase(m, rng)
    if m.cell is None:
        return f"Is there {np_}?"
    pos = POSITION_PHRASES[m.cell]
    return f"Is there {np_} {pos}?" if rng.random() < 0.75 else f"Is {np_} {pos}?"


def _neighbors(cell: int) -> list[int]:
    r, c = divmod(cell, 3)
    return [rr * 3 + cc for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)) if 0 <= rr < 3 and 0 <= cc < 3]


def _wrong_value(obj: WorldObject, kind: str, rng: np.random.Generator) -> str | int:
    """A near-miss value of one attribute: the category's typical color, the other size, a neighbouring cell."""
    if kind == "color":
        typical = TYPICAL_COLOR[obj.category]
        others = [c for c in COLORS if c != obj.color]
        return typical if typical != obj.color and rng.random() < 0.5 else others[int(rng.integers(len(others)))]
    if kind == "size":
        return "small" if obj.size == "large" else "large"
    near = _neighbors(obj.cell)
    return near[int(rng.integers(len(near)))]


def _stated(category: str, color: str, size: str, cell: int, rng: np.random.Generator) -> Mention:
    """A mention that states each attribute with the captioner's usual frequencies (at least one attribute)."""
    keep = [rng.random() < 0.7, rng.random() < 0.5, rng.random() < 0.7]
    if not any(keep):
        keep[int(rng.integers(3))] = True
    return Mention(category, color if keep[0] else None, size if keep[1] else None, cell if keep[2] else None)


def _claim(scene: Scene, obj: WorldObject, want_true: bool, absent_partners: list[str], absent: list[str],
           rng: np.random.Generator) -> YesNoQuestion:
    if want_true:
        m = _stated(obj.category, obj.color, obj.size, obj.cell, rng)
        return YesNoQuestion(claim_question(m, rng), True, "claim", False, m)
    if rng.random() < 0.4 and absent:  # an absent object, stated with plausible attributes
        hard = bool(absent_partners) and rng.random() < 0.6
        pool = absent_partners if hard else absent
        cat = pool[int(rng.integers(len(pool)))]
        color = TYPICAL_COLOR[cat] if rng.random() < 0.5 else list(COLORS)[int(rng.integers(len(COLORS)))]
        m = _stated(cat, color, SIZES[int(rng.integers(2))], int(rng.integers(N_CELLS)), rng)
        return YesNoQuestion(claim_question(m, rng), False, "claim", hard, m)
    m = _stated(obj.category, obj.color, obj.size, obj.cell, rng)  # a present object with one attribute wrong
    stated = [f for f in ("color", "size", "cell") if getattr(m, f) is not None]
    field = stated[int(rng.integers(len(stated)))]
    m = replace(m, **{field: _wrong_value(obj, "position" if field == "cell" else field, rng)})
    return YesNoQuestion(claim_question(m, rng), False, "claim", True, m)


def sample_questions(scene: Scene, rng: np.random.Generator, n: int) -> list[YesNoQuestion]:
    """n balanced yes/no questions about a scene: half true, half false, most false ones hard negatives."""
    out: list[YesNoQuestion] = []
    present = list(scene.objects)
    absent = [c for c in CATEGORIES if c not in scene.categories]
    absent_partners = [PARTNER[o.category] for o in present if PARTNER.get(o.category) in absent]
    for i in range(n):
        want_true = i % 2 == 0
        kind = QUESTION_KINDS[int(rng.integers(len(QUESTION_KINDS)))]
        obj: WorldObject = present[int(rng.integers(len(present)))]
        if kind == "claim":
            out.append(_claim(scene, obj, want_true, absent_partners, absent, rng))
            continue
        if kind == "existence":
            if want_true:
                cat, hard = obj.category, False
            else:
                hard = bool(absent_partners) and rng.random() < 0.6
                pool = absent_partners if hard else absent
                cat = pool[int(rng.integers(len(pool)))]
            out.append(YesNoQuestion(existence_question(cat, rng), want_true, kind, hard, Mention(cat)))
            continue
        true_value = {"color": obj.color, "size": obj.size, "position": obj.cell}[kind]
        value = true_value if want_true else _wrong_value(obj, kind, rng)
        field = "cell" if kind == "position" else kind
        q = attribute_question(obj.category, kind, value)
        out.append(YesNoQuestion(q, bool(want_true), kind, not want_true, Mention(obj.category, **{field: value})))
    return out


def with_suffix(question: str, rng: np.random.Generator | None = None, prob: float = 0.5) -> str:
    """Questions sometimes carry an explicit 'answer yes or no' suffix, as the feedback stage's questions do."""
    if rng is None or rng.random() < prob:
        return f"{question} {YES_NO_SUFFIX}"
    return question


# ---------------------------------------------------------------- parsing


_CAT_RE = re.compile(r"\b(" + "|".join(CATEGORIES) + r")s?\b")
_COLOR_RE = re.compile(r"\b(" + "|".join(COLORS) + r")\b")
_SIZE_RE = re.compile(r"\b(" + "|".join(SIZE_SYNONYMS) + r")\b")
_POS_RE = re.compile("|".join(re.escape(p) for p in sorted(POSITION_PHRASES, key=len, reverse=True)))


def parse_mentions(text: str) -> list[Mention]:
    """Every object mention in a text, with the attributes its sentence states.

    A sentence with one category attaches the sentence's color, size and position to it; in a sentence with several
    categories, only the category words count (attributes would be ambiguous). Repeats are kept: every mention
    counts, as in CHAIR.
    """
    mentions: list[Mention] = []
    for sent in re.split(r"[.!?\n]+", text.lower()):
        cats = _CAT_RE.findall(sent)
        if not cats:
            continue
        if len(cats) > 1:
            mentions.extend(Mention(c) for c in cats)
            continue
        color = _COLOR_RE.findall(sent)
        size = _SIZE_RE.findall(sent)
        pos = _POS_RE.findall(sent)
        mentions.append(
            Mention(
                cats[0],
                color[0] if len(color) == 1 else None,
                SIZE_SYNONYMS[size[0]] if len(size) == 1 else None,
                POSITION_PHRASES.index(pos[0]) if len(pos) == 1 else None,
            )
        )
    return mentions


__all__ = [
    "CELL_WORDS", "DESCRIBE_INSTRUCTIONS", "POSITION_PHRASES", "QUESTION_KINDS", "YES_NO_SUFFIX", "CaptionNoise",
    "Mention", "YesNoQuestion", "afterthought", "attribute_checks", "claim_holds", "claim_question", "describe",
    "existence_question", "noisy_caption", "parse_mentions", "sample_questions", "true_mentions", "with_suffix",
]
