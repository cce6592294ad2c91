"""One taxonomy of quarantine reasons: every summary (collect's stages, best-of-N, the reference pass, prompt
ingest) counts a reason under the same kind (records.reason_kind)."""

from __future__ import annotations

import pytest

from rlaifv.records import reason_counts, reason_kind

KINDS = {
    "image file not found: /data/x.png": "image file not found",
    "image file not found: /data/y.png": "image file not found",
    "labeler returned non-finite probabilities (nan, nan)": "labeler returned non-finite probabilities",
    "non-finite log-prob (policy nan, reference -3.0)": "non-finite log-prob",
    "non-finite log-prob (policy -inf, reference -3.0)": "non-finite log-prob",
    "too long: prompt 30 + response 90 = 120 tokens > 64 (the model's context or max_length)": "too long",
    "labeler refused the claim: http://host:8000/v1 answered 400: bad image": "labeler refused the claim",
    "cannot reach http://host:8000/v1": "cannot reach http://host:8000/v1",
    "empty response": "empty response",
    "sampling: sampling refused: 400": "sampling",
    "  ": "",
}


@pytest.mark.parametrize("reason,kind", KINDS.items())
def test_a_reason_is_counted_by_its_first_clause(reason, kind):
    assert reason_kind(reason) == kind
    assert len(reason_kind("x" * 200)) == 80


def test_every_summary_counts_a_reason_under_the_same_kind(tmp_path):
    from rlaifv.infer.bon import summarize as bon_summary
    from rlaifv.logps.reference import ReferenceTable
    from rlaifv.pipelines.best_of_n import bon_stores
    from rlaifv.pipelines.collect import stores
    from rlaifv.pipelines.collect import summarize as collect_summary

    reasons = list(KINDS)
    want = reason_counts(reasons)
    assert sum(want.values()) == len(reasons) and len(want) < len(reasons)  # some reasons fall together

    collect_out, bon_out = tmp_path / "collect", tmp_path / "bon"
    for store in (stores(collect_out)["verdicts"], bon_stores(bon_out)["bon"]):
        with store.writer() as writer:
            for i, reason in enumerate(reasons):
                writer.quarantine(f"p{i}/0/0", reason, {"i": i})

    collected = collect_summary(collect_out)["stages"]["verdicts"]["quarantined"]
    best_of_n = bon_summary(bon_out, bon_stores(bon_out)["bon"], bon_stores(bon_out)["prompts"])
    reference = ReferenceTable({}, {f"k{i}": r for i, r in enumerate(reasons)}).reasons()
    assert collected == best_of_n["quarantine_reasons"] == reference == want
