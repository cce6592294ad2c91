"""Where our protocol differs from the paper's, benchmark by benchmark, for `rlaifv eval report` to flag next to
the paper's numbers.

Some differences always hold (rlaifv's own judge prompts, its word rules); others depend on how a run was made
(which judge or extractor, whether free-form yes/no answers were cut to their first word, how many answers could
not be read), and the result files say which. A difference names the runs it concerns and the paper columns it
touches (`paper_keys`, keys of compare.PAPER); one that touches no published number is still listed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Runs = Sequence[tuple[str, dict[str, dict[str, Any]]]]

# the benchmark (report section) each result kind belongs to, and the paper columns of that benchmark
BENCHMARK = {"chair": "Object HalBench", "mmhal": "MMHal-Bench", "amber": "AMBER", "refomb": "RefoMB",
             "mmstar": "MMStar", "human": "MHumanEval", "pope": "POPE"}
PAPER_KEYS = {"chair": ("objhal_resp", "objhal_mention"), "mmhal": ("mmhal_score", "mmhal_hall"),
              "amber": ("amber_acc", "amber_f1")}


@dataclass(frozen=True)
class Deviation:
    kind: str  # the result kind (chair, amber, ...)
    text: str
    paper_keys: tuple[str, ...] | None = None  # None: every paper column of the benchmark; (): none of them

    @property
    def benchmark(self) -> str:
        return BENCHMARK[self.kind]

    def touches(self, paper_key: str | None) -> bool:
        keys = PAPER_KEYS.get(self.kind, ()) if self.paper_keys is None else self.paper_keys
        return paper_key in keys


def _with(runs: Runs, kind: str, test: Callable[[dict[str, Any]], Any] = lambda r: True) -> list[str]:
    return [name for name, results in runs if kind in results and test(results[kind])]


def _values(runs: Runs, kind: str, key: str) -> list[Any]:
    return list(dict.fromkeys(results[kind].get(key) for _, results in runs if kind in results))


def _names(models: list[Any]) -> str:
    known = [str(m) for m in models if m]
    unknown = " and a judge the result does not name (re-scored offline)" if None in models else ""
    return (", ".join(known) or "a judge the result does not name (re-scored offline)") + (unknown if known else "")


def _total(runs: Runs, kind: str, key: str) -> int:
    return sum(int(results[kind].get(key) or 0) for _, results in runs if kind in results)


def _chair(runs: Runs) -> list[Deviation]:
    out = []
    rules = _with(runs, "chair", lambda r: r.get("extract") == "rules")
    if rules:
        out.append(Deviation("chair", f"objects found by CHAIR's word rules ({', '.join(rules)}), not listed by an "
                                      "LLM as for the published numbers; rules also count objects only mentioned in "
                                      "passing, so rates run higher (`--extract llm`)"))
    llm = _with(runs, "chair", lambda r: r.get("extract") == "llm")
    if llm:
        extractors = [m for m in _values(runs, "chair", "extractor") if m]
        who = ", ".join(map(str, extractors)) or "an LLM the result does not name"
        out.append(Deviation("chair", f"objects listed by {who} with rlaifv's extraction prompt ({', '.join(llm)}); "
                                      "the paper's extractor was gpt-3.5-turbo with its own prompt"))
    out.append(Deviation("chair", "words tokenized and singularized by rlaifv's rules, not NLTK and pattern; synonym "
                                  "phrases of up to three words merged (docs/evaluation.md)"))
    return out


def _mmhal(runs: Runs) -> list[Deviation]:
    judges = _values(runs, "mmhal", "judge_model")
    return [Deviation("mmhal", f"rated by {_names(judges)} with rlaifv's judge prompt, not by GPT-4 with the "
                               "benchmark's prompt; scores move with the judge")]


def _amber(runs: Runs) -> list[Deviation]:
    out = []
    mapped = _with(runs, "amber", lambda r: r.get("n_mapped_yes_no"))
    if mapped:
        out.append(Deviation("amber", f"{_total(runs, 'amber', 'n_mapped_yes_no')} free-form answers to yes/no "
                                      f"questions cut to their first word Yes/No by `rlaifv eval generate` "
                                      f"({', '.join(mapped)}); AMBER's script counts anything but an exact Yes/No "
                                      "as wrong"))
    if _with(runs, "amber", lambda r: "generative" in r):
        out.append(Deviation("amber", "generative metrics (CHAIR, Cover, Hal, Cog, AMBER score): nouns are "
                                      "lemmatized tokens matched exactly against AMBER's vocabulary, without its POS "
                                      "tagger and word-vector matches", paper_keys=()))
    return out


def _refomb(runs: Runs) -> list[Deviation]:
    out = [Deviation("refomb", f"judged by {_names(_values(runs, 'refomb', 'judge_model'))} with rlaifv's prompt, "
                               "not GPT-4 with the paper's; each pair judged in both orders, both verdicts from one "
                               "call")]
    references = [r for r in _values(runs, "refomb", "reference") if r]
    out.append(Deviation("refomb", "against the reference answers in " + (", ".join(map(str, references)) or
                                                                          "a file the result does not name")
                         + "; the paper's reference is GPT-4V"))
    unparsed = _total(runs, "refomb", "n_unparsed")
    if unparsed:
        out.append(Deviation("refomb", f"{unparsed} judgements without a readable verdict left out (the paper's "
                                       "script asks until one parses)"))
    return out


def _mmstar(runs: Runs) -> list[Deviation]:
    return [Deviation("mmstar", f"option letters read by one rule, without VLMEvalKit's ChatGPT fallback: "
                                f"{_total(runs, 'mmstar', 'unparsed')} answers named no single letter and count "
                                "wrong; the prompt suffix is LLaVA's")]


def _human(runs: Runs) -> list[Deviation]:
    return [Deviation("human", "your prompts and annotators, not the paper's prompts and annotators; several "
                               "annotators combined by majority, a tie counting as hallucinated")]


def _pope(runs: Runs) -> list[Deviation]:
    return [Deviation("pope", "not in the paper (no number to compare); the answer rule and prompt are POPE's and "
                              "LLaVA's")]


FINDERS = {"chair": _chair, "mmhal": _mmhal, "amber": _amber, "refomb": _refomb, "mmstar": _mmstar,
           "human": _human, "pope": _pope}


def find_deviations(runs: Runs) -> list[Deviation]:
    """Every way the runs' protocol differs from the paper's, for the benchmarks the runs have, in report order."""
    found = []
    for kind, finder in FINDERS.items():
        if _with(runs, kind):
            found += finder(runs)
    return found
