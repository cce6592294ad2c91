"""Divide, by rules: a response in simple English -> self-contained statements -> yes/no questions.

RLAIF-V splits each response into atomic claims and asks the labeler one yes/no question per claim (REFERENCE 2).
The paper does both steps with fine-tuned LLMs; for simple English -- the synthetic world's captions, short policy
answers -- fixed rules do the same job deterministically, cost nothing, and give the ground truth that the world's
small splitter LM learns from (`rlaifv.world.splitter`).

What the rules do, in order:

1. cut the response to `max_words` words (the paper cuts to 300);
2. split it into sentences on . ! ? ; and newlines; questions ("...?") and headers ("...:") are not claims;
3. split each sentence into clauses at ", and" / ", but" / "and there is"; a clause without a subject borrows the
   previous clause's subject and a leading "it" becomes the thing it refers to, so every statement stands alone;
4. drop a leading connective ("Also, there is X" -> "There is X"), and opinions and hedges ("I think ...",
   "It seems ...", "Maybe ..."): they assert nothing checkable;
5. split lists of objects ("There are a fork and a knife.") into one statement per object;
6. turn each statement into a question by its form ("There is X" -> "Is there X?", "X is Y" -> "Is X Y?",
   "I can see X" -> "Is there X?", "In the top left corner, there is X" -> "Is there X in the top left corner?"),
   falling back to "Is it true that ...?". Negations stay in the question ("There is no cup." -> "Is there no
   cup?"), so "yes" always means the statement holds.

Questions carry no "answer yes or no" suffix: the caller adds the configured one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rlaifv.records import BadInput

Claim = tuple[str, str]  # (statement, yes/no question)

# A list marker at the start of a line: "-", "*", "•", "1.", "1)", "(1)". Shared with the LLM splitter's parser.
BULLET_RE = re.compile(r"^\s*(?:[-*•‣◦–—]\s*|\(?\d{1,3}[.)]\s+)")

_CONTRACTIONS: dict[str, str] = {
    "there's": "there is", "it's": "it is", "that's": "that is", "isn't": "is not", "aren't": "are not",
    "wasn't": "was not", "weren't": "were not", "doesn't": "does not", "don't": "do not", "didn't": "did not",
    "can't": "cannot", "couldn't": "could not", "won't": "will not", "i'm": "I am", "there're": "there are",
}
_CONTRACTION_RE = re.compile(r"\b(" + "|".join(re.escape(c) for c in _CONTRACTIONS) + r")\b", re.IGNORECASE)

# Openings that mark an opinion or a guess rather than a claim about the image.
_HEDGE_RE = re.compile(
    r"^(?:i\s+(?:think|believe|guess|feel|suppose|assume|imagine|would\s+say)|in\s+my\s+(?:opinion|view)"
    r"|it\s+(?:seems|appears|looks\s+like|might|may|could)|(?:this|that)\s+(?:seems|appears|looks\s+like)"
    r"|(?:perhaps|maybe|probably|possibly|presumably|apparently|seemingly)\b|i\s+am\s+not\s+sure"
    r"|i\s+(?:hope|wonder|like|love|prefer))\b",
    re.IGNORECASE,
)
# A connective that opens a clause and asserts nothing itself ("Also, there is a knife.").
_CONNECTIVE_RE = re.compile(
    r"^(?:also|additionally|in\s+addition|moreover|furthermore|besides|plus|finally|lastly)\s*,\s*", re.IGNORECASE
)
_INTERJECTIONS = frozenset(
    {"sure", "certainly", "of course", "okay", "ok", "yes", "no", "hello", "hi", "thanks", "thank you", "well"}
)

# Clause boundaries: ", and" / ", but" / ", while", and a bare "and" before "there is" or before a verb whose
# subject is the previous clause's ("The cup is blue and is on the left").
_CLAUSE_RE = re.compile(
    r"\s*,\s*(?:and|but|while)\s+|\s+and\s+(?=there\s+(?:is|are|was|were)\b)"
    r"|\s+and\s+(?=(?:is|are|was|were|has|have|can|could)\b)",
    re.IGNORECASE,
)
# Items of a list of noun phrases: "a fork, a knife, and a cup" (split only where every item starts a new phrase).
_LIST_RE = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+", re.IGNORECASE)

_SINGULAR_DETS = frozenset({"a", "an", "one", "another", "this", "that", "each", "every"})
_PLURAL_DETS = frozenset(
    {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many", "multiple",
     "these", "those", "both", "few", "some"}
)
_OTHER_DETS = frozenset({"the", "no", "his", "her", "its", "their", "my", "our", "your", "any"})
DETERMINERS = _SINGULAR_DETS | _PLURAL_DETS | _OTHER_DETS
# Words that may be lowercased when a statement's subject moves behind the verb (never "I" or a name).
_LOWERABLE = DETERMINERS | {"it", "they", "there", "he", "she", "we", "you", "all", "most", "none"}

# Prepositions that open a location phrase ("on the left", "in the top left corner").
_PREPOSITIONS = (
    "in", "on", "at", "near", "under", "above", "below", "behind", "beside", "next", "inside", "outside",
    "between", "beneath", "over", "against", "along", "across", "around", "in front of",
)
_PP_RE = re.compile(r"\s+(?=(?:" + "|".join(_PREPOSITIONS) + r")\b)", re.IGNORECASE)
_PP_START_RE = re.compile(r"^(?:" + "|".join(_PREPOSITIONS) + r")\b", re.IGNORECASE)

# Verbs and auxiliaries: a clause with none of these is a bare noun phrase (a list item cut off by ", and").
_BE = ("is", "are", "was", "were")
_MODALS = ("can", "could", "will", "would", "should", "may", "might", "must", "does", "do", "did", "cannot")
_VERBS = frozenset(
    _BE + _MODALS + ("be", "has", "have", "had", "see", "sees", "saw", "show", "shows", "contain", "contains",
                     "depict", "depicts", "feature", "features", "include", "includes", "hold", "holds", "sit",
                     "sits", "stand", "stands", "lie", "lies", "look", "looks", "appear", "appears", "seem", "seems")
)

_EXIST_RE = re.compile(r"^there\s+(?P<verb>is|are|was|were)\s+(?P<np>.+)$", re.IGNORECASE)
_PP_EXIST_RE = re.compile(
    r"^(?P<pp>(?:" + "|".join(_PREPOSITIONS) + r")\b[^,]*?),\s*there\s+(?P<verb>is|are|was|were)\s+(?P<np>.+)$",
    re.IGNORECASE,
)
_SEE_RE = re.compile(
    r"^(?P<subj>i|we|you|one)\s+(?:(?P<aux>can|could)\s+)?(?P<neg>not\s+|cannot\s+)?(?:also\s+)?"
    r"(?P<verb>see|notice|observe|spot)\s+(?:also\s+)?(?P<np>.+)$",
    re.IGNORECASE,
)
_SEE_NEG_RE = re.compile(
    r"^(?P<subj>i|we|you|one)\s+(?:cannot|can\s+not|could\s+not|do\s+not|did\s+not)\s+"
    r"(?P<verb>see|notice|observe|spot)\s+(?P<np>.+)$",
    re.IGNORECASE,
)
_SHOWS_RE = re.compile(
    r"^(?P<subj>(?:the|this)\s+(?:image|picture|photo|photograph|scene|illustration|drawing))\s+(?:also\s+)?"
    r"(?P<verb>shows|contains|depicts|features|includes|displays|has)\s+(?:also\s+)?(?P<np>.+)$",
    re.IGNORECASE,
)
_COPULA_RE = re.compile(r"^(?P<subj>.+?)\s+(?P<verb>is|are|was|were)\s+(?P<rest>.+)$", re.IGNORECASE)
_MODAL_RE = re.compile(
    r"^(?P<subj>.+?)\s+(?P<verb>can|could|will|would|should|may|might|must|does|do|did)\s+(?P<rest>.+)$",
    re.IGNORECASE,
)
_HAS_RE = re.compile(r"^(?P<subj>.+?)\s+(?P<verb>has|have)\s+(?P<rest>.+)$", re.IGNORECASE)
_MAX_SUBJECT_WORDS = 8


# ---------------------------------------------------------------- text


def cut_words(text: str, max_words: int) -> str:
    """The text up to its `max_words`-th word, whitespace (newlines included) kept, since newlines end sentences."""
    for i, match in enumerate(re.finditer(r"\S+", text)):
        if i == max_words - 1:
            return text[: match.end()]
    return text


def sentences(text: str) -> list[tuple[str, str]]:
    """(body, terminator) per sentence: split on . ! ? ; and newlines; a decimal point ("2.5") does not split."""
    out = []
    for line in text.splitlines():
        line = BULLET_RE.sub("", line, count=1)
        for match in re.finditer(r"(?:\d\.\d|[^.!?;])+[.!?;]*", line):
            raw = match.group().strip()
            body = raw.rstrip(".!?;").strip()
            if body:
                out.append((body, raw[len(body):].strip()[:1]))
    return out


def _expand_contractions(text: str) -> str:
    def repl(m: re.Match) -> str:
        full = _CONTRACTIONS[m.group().lower()]
        return full[0].upper() + full[1:] if m.group()[0].isupper() else full

    return _CONTRACTION_RE.sub(repl, text.replace("’", "'"))


def _first_word(text: str) -> str:
    return text.split(maxsplit=1)[0].lower() if text.strip() else ""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower_subject(text: str) -> str:
    """Lowercase the first letter where it only starts the sentence ("A fork" -> "a fork"; "I" and names stay)."""
    return text[:1].lower() + text[1:] if _first_word(text) in _LOWERABLE else text


def is_hedge(clause: str) -> bool:
    """An opinion, a guess or an interjection: nothing a labeler could check against the image."""
    return bool(_HEDGE_RE.match(clause)) or clause.strip().lower() in _INTERJECTIONS or len(clause.split()) < 2


def _has_verb(clause: str) -> bool:
    return any(w in _VERBS for w in _words(clause))


# ---------------------------------------------------------------- noun phrases


def split_location(np_: str) -> tuple[str, str]:
    """("a red fork on the left") -> ("a red fork", "on the left"); no location -> (np, "")."""
    parts = _PP_RE.split(np_, maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 and parts[0] else (np_, "")


def head_noun(np_: str) -> str:
    """The noun a phrase is about: its last word before any location ("a small red fork on the left" -> "fork")."""
    words = _words(split_location(np_)[0])
    return words[-1] if words else ""


def is_plural(np_: str) -> bool:
    """Number of a noun phrase, from its determiner, else from its head noun's -s."""
    det = _first_word(np_)
    if det in _SINGULAR_DETS:
        return False
    if det in _PLURAL_DETS:
        return True
    head = head_noun(np_)
    return head.endswith("s") and not head.endswith("ss")


def split_list(np_: str) -> list[str]:
    """A list of noun phrases as its items, the shared trailing location given to each item.

    "a fork and a knife on the left" -> ["a fork on the left", "a knife on the left"]. Splits only when every item
    starts with a determiner, so "a black and white cat" stays one phrase.
    """
    items = [i for i in _LIST_RE.split(np_.strip()) if i]
    if len(items) < 2 or any(_first_word(i) not in DETERMINERS for i in items):
        return [np_.strip()]
    last, location = split_location(items[-1])
    if location and all(not split_location(i)[1] for i in items[:-1]):
        items = [f"{i} {location}" for i in items[:-1]] + [items[-1]]
    return items


def _be(np_: str, past: bool) -> str:
    if past:
        return "were" if is_plural(np_) else "was"
    return "are" if is_plural(np_) else "is"


# ---------------------------------------------------------------- clauses -> statements


def clauses(body: str) -> list[str]:
    """Split a sentence at clause boundaries; a piece with no verb was a list item and joins the piece before it."""
    out: list[str] = []
    for piece in _CLAUSE_RE.split(body):
        piece = piece.strip(" ,")
        if not piece:
            continue
        if out and not _has_verb(piece) and _first_word(piece) in DETERMINERS:
            out[-1] = f"{out[-1]}, and {piece}"
        else:
            out.append(piece)
    return out


def _subject_of(clause: str) -> str:
    """What a following "it"/"they" or a subject-less clause refers to ("" when unknown)."""
    for pattern in (_EXIST_RE, _PP_EXIST_RE, _SEE_RE, _SHOWS_RE):
        m = pattern.match(clause)
        if m:
            items = split_list(m.group("np"))
            return " and ".join(f"the {head_noun(i)}" for i in items if head_noun(i))
    m = _COPULA_RE.match(clause) or _MODAL_RE.match(clause) or _HAS_RE.match(clause)
    if m and len(m.group("subj").split()) <= _MAX_SUBJECT_WORDS and _first_word(m.group("subj")) != "it":
        return _lower_subject(m.group("subj"))
    return ""


def _resolve(clause: str, previous: str) -> str:
    """Make a clause stand alone: "it is red" / "is red" after "There is a cup" -> "the cup is red"."""
    first = _first_word(clause)
    if first in ("it", "they") and not is_hedge(clause):
        subject = _subject_of(previous)
        if subject and (first == "it") == (" and " not in subject):
            return f"{subject} {clause.split(maxsplit=1)[1]}" if len(clause.split()) > 1 else clause
    if first in _BE + _MODALS + ("has", "have"):
        subject = _subject_of(previous)
        if subject:
            return f"{subject} {clause}"
    return clause


def _atomic(clause: str) -> list[str]:
    """One statement per object where a clause lists several; statements without final punctuation."""
    m = _EXIST_RE.match(clause)
    if m:
        return [f"{clause[:5]} {verb} {i}" for i, verb in _with_verbs(m.group("np"), m.group("verb"))]
    m = _PP_EXIST_RE.match(clause)
    if m:
        return [f"{m.group('pp')}, there {verb} {i}" for i, verb in _with_verbs(m.group("np"), m.group("verb"))]
    for pattern in (_SEE_RE, _SEE_NEG_RE, _SHOWS_RE):
        m = pattern.match(clause)
        if m:
            head = clause[: m.start("np")].rstrip()
            return [f"{head} {i}" for i in split_list(m.group("np"))]
    m = _COPULA_RE.match(clause)
    if m and len(m.group("subj").split()) <= _MAX_SUBJECT_WORDS:
        return [f"{i} {verb} {m.group('rest')}" for i, verb in _with_verbs(m.group("subj"), m.group("verb"))]
    return [clause]


def _with_verbs(np_: str, verb: str) -> list[tuple[str, str]]:
    """List items, each with "is"/"are" agreeing with it; a single phrase keeps the verb it was written with."""
    items = split_list(np_)
    if len(items) == 1:
        return [(items[0], verb)]
    past = verb.lower() in ("was", "were")
    return [(i, _be(i, past)) for i in items]


def statements(text: str) -> list[str]:
    """The self-contained factual statements of a text, each a sentence ending with a period."""
    out: list[str] = []
    for body, terminator in sentences(_expand_contractions(text)):
        if terminator == "?" or body.endswith(":"):
            continue  # a question or a header asserts nothing
        previous = ""
        for clause in clauses(body):
            resolved = _resolve(_CONNECTIVE_RE.sub("", clause), previous)
            previous = resolved
            if is_hedge(resolved):
                continue
            out.extend(f"{_cap(s.strip())}." for s in _atomic(resolved))
    return out


# ---------------------------------------------------------------- statements -> questions


def _there_question(np_: str, verb: str, location: str = "") -> str:
    tail = f" {location}" if location else ""
    return f"{_cap(verb.lower())} there {np_}{tail}?"


def _negated_np(np_: str) -> str:
    """ "a cup" -> "no cup": what "I cannot see a cup" claims about the image."""
    det, _, rest = np_.partition(" ")
    return f"no {rest}" if det.lower() in ("a", "an", "any") and rest else f"not {np_}"


def question(statement: str) -> str:
    """The yes/no question whose "yes" means the statement holds (negations kept)."""
    s = statement.strip().rstrip(".!;").strip()
    m = _EXIST_RE.match(s)
    if m:
        return _there_question(m.group("np"), m.group("verb"))
    m = _PP_EXIST_RE.match(s)
    if m:
        pp = m.group("pp")
        return _there_question(m.group("np"), m.group("verb"), pp[:1].lower() + pp[1:])
    m = _SEE_NEG_RE.match(s)
    if m:
        np_ = _negated_np(m.group("np"))
        return _there_question(np_, "are" if is_plural(m.group("np")) else "is")
    m = _SEE_RE.match(s)
    if m:
        np_ = _negated_np(m.group("np")) if m.group("neg") else m.group("np")
        return _there_question(np_, _be(m.group("np"), m.group("verb").lower() == "saw"))
    m = _SHOWS_RE.match(s)
    if m:
        return _there_question(m.group("np"), _be(m.group("np"), past=False))
    m = _COPULA_RE.match(s)
    if m and len(m.group("subj").split()) <= _MAX_SUBJECT_WORDS:
        return f"{_cap(m.group('verb').lower())} {_lower_subject(m.group('subj'))} {m.group('rest')}?"
    m = _MODAL_RE.match(s)
    if m and len(m.group("subj").split()) <= _MAX_SUBJECT_WORDS:
        return f"{_cap(m.group('verb').lower())} {_lower_subject(m.group('subj'))} {m.group('rest')}?"
    m = _HAS_RE.match(s)
    if m and len(m.group("subj").split()) <= _MAX_SUBJECT_WORDS:
        subj, rest = _lower_subject(m.group("subj")), m.group("rest")
        aux = "Does" if m.group("verb").lower() == "has" else "Do"
        words = rest.split()
        if words[0].lower() == "been" or words[:2] == ["not", "been"]:
            return f"{_cap(m.group('verb').lower())} {subj} {rest}?"  # perfect tense: "has" is the auxiliary
        if words[0].lower() == "not" and len(words) > 1:
            return f"{aux} {subj} not have {' '.join(words[1:])}?"
        return f"{aux} {subj} have {rest}?"
    return f"Is it true that {s[:1].lower() + s[1:] if _first_word(s) != 'i' else s}?"


# ---------------------------------------------------------------- existence claims

# Determiners that introduce an object as new ("a red cup", "two cups"), as opposed to one mentioned before
# ("the cup") or denied ("no cup"): only these say that something is there.
_INTRODUCING_DETS = frozenset({"a", "an", "one", "another"}) | (_PLURAL_DETS - {"these", "those", "both"})


def _introduced_object(statement: str) -> tuple[str, bool] | None:
    """(the noun phrase that introduces an object, whether the statement adds a location to it), or None where the
    statement introduces none (a negation, a statement about "the cup", an unparsed form)."""
    s = statement.strip().rstrip(".!;").strip()
    found: tuple[str, bool] | None = None
    for pattern in (_EXIST_RE, _SEE_RE, _SHOWS_RE):
        m = pattern.match(s)
        if m and not (pattern is _SEE_RE and m.group("neg")):
            found = (m.group("np"), False)
            break
    else:
        m = _PP_EXIST_RE.match(s)
        if m:
            found = (m.group("np"), True)
        else:
            m = _COPULA_RE.match(s)
            if m and len(m.group("subj").split()) <= _MAX_SUBJECT_WORDS and _first_word(m.group("rest")) != "not":
                found = (m.group("subj"), True)
    if found is None or _first_word(found[0]) not in _INTRODUCING_DETS:
        return None
    return found


def existence_claim(statement: str) -> Claim | None:
    """ "There is a large green box on the left." -> ("There is a box.", "Is there a box?"): the object's bare
    existence, for a statement that introduces an object with details (colour, size, place); None otherwise, and
    for a statement that already says no more than that."""
    found = _introduced_object(statement)
    if found is None:
        return None
    np_, located = found
    phrase, location = split_location(np_)
    head = head_noun(np_)
    if not head:
        return None
    plural = is_plural(np_)
    bare = head if plural else f"{'an' if head[0] in 'aeiou' else 'a'} {head}"
    if not (located or location) and phrase.strip().lower() == bare:
        return None  # "There is a cup.": the claim is its own existence claim
    verb = "are" if plural else "is"
    return f"There {verb} {bare}.", _there_question(bare, verb)


def with_existence_claims(claims: Sequence[Claim]) -> list[tuple[Claim, bool]]:
    """(claim, is it an added existence claim) for `claims`, with an existence claim (`existence_claim`) before
    each claim that introduces an object with details, unless the same question is asked already.

    Why: a mention with one wrong detail is rejected as a whole, so an answer that leaves the object out scores
    better than one that names the real object with a wrong colour. With the bare existence claim beside it, the
    mention still earns one accepted claim, and a pair rule on accepted claims (`PairsConfig.keep_accepted`) can
    tell "said less" from "said less that is false". An added claim only supports: the score never counts its
    rejection, which the detailed claim already carries (`Claim.support`).
    """
    asked = {q for _, q in claims}
    out: list[tuple[Claim, bool]] = []
    for statement, q in claims:
        extra = existence_claim(statement)
        if extra is not None and extra[1] not in asked:
            asked.add(extra[1])
            out.append((extra, True))
        out.append(((statement, q), False))
    return out


# ---------------------------------------------------------------- the splitter


class RuleSplitter:
    """Deterministic splitter for simple English: the 'rules' choice of `ClaimsConfig.splitter`.

    Exact on every sentence form the synthetic world writes, so on world responses its claims are the mentioned
    objects with their stated attributes; on free English it is a reasonable, transparent baseline.
    """

    def __init__(self, max_words: int = 300) -> None:
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.max_words = max_words

    def split_one(self, instruction: str, response: str) -> list[Claim]:
        """Claims of one response; raises BadInput for an empty response or one with no factual claim.

        The instruction is not needed by the rules (a world response never leans on it); it is taken so both
        splitters share one interface.
        """
        del instruction
        if not response or not response.strip():
            raise BadInput("empty response")
        found = statements(cut_words(response, self.max_words))
        if not found:
            raise BadInput(f"no claims found (no factual statement): {response[:80]!r}")  # kind as the LLM splitter's
        return [(s, question(s)) for s in found]

    def split(self, items: Sequence[tuple[str, str]]) -> list[list[Claim] | BadInput]:
        """Per (instruction, response): its claims, or the BadInput saying why there are none."""
        out: list[list[Claim] | BadInput] = []
        for instruction, response in items:
            try:
                out.append(self.split_one(instruction, response))
            except BadInput as exc:
                out.append(exc)
        return out


__all__ = [
    "BULLET_RE", "Claim", "RuleSplitter", "clauses", "cut_words", "existence_claim", "head_noun", "is_hedge",
    "question", "sentences", "split_list", "split_location", "statements", "with_existence_claims",
]
