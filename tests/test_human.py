"""Human evaluation: the statistics worked out by hand, sheets exported (blinded or not) and scored back per model,
through `rlaifv eval human export | score` as a user runs them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from rlaifv.cli import app
from rlaifv.eval.stats import bootstrap_interval, cohen_kappa, fleiss_kappa, quantile, wilson_interval


def _invoke(*args: str):
    return CliRunner().invoke(app, ["eval", "human", *args])


def test_wilson_interval_by_hand():
    # k=1, n=4, z=2: p=1/4, denominator 1 + 4/4 = 2, center (1/4 + 4/8) / 2 = 0.375,
    # half = 2/2 * sqrt(1/4 * 3/4 / 4 + 4/64) = sqrt(0.109375) = 0.3307189
    lo, hi = wilson_interval(1, 4, z=2)
    assert lo == pytest.approx(0.375 - math.sqrt(0.109375)) and hi == pytest.approx(0.375 + math.sqrt(0.109375))
    # k=0: the interval is [0, z^2 / (n + z^2)] = [0, 3.8415 / 13.8415] for n=10
    assert wilson_interval(0, 10) == [0.0, pytest.approx(1.959963984540054**2 / (10 + 1.959963984540054**2))]
    assert wilson_interval(0, 0) is None


def test_kappas_by_hand():
    # agree on 4 of 6; each rater says yes 3/6 -> chance 0.5; kappa (2/3 - 1/2) / (1/2) = 1/3
    assert cohen_kappa([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]) == pytest.approx(1 / 3)
    # per item (yes^2 + no^2 - 3) / 6: 1, 1/3, 1, 1/3 -> mean 2/3; yes share 6/12 -> chance 1/2; kappa 1/3
    assert fleiss_kappa([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]]) == pytest.approx(1 / 3)
    assert cohen_kappa([1, 1], [1, 1]) is None  # one label everywhere: chance agreement 1, kappa undefined


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [1, 0, 1, 1, 0.5, 0, 1, 1]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    lo, hi = bootstrap_interval(values, seed=3)
    assert 0 <= lo < sum(values) / len(values) < hi <= 1
    assert bootstrap_interval([0.5] * 5) == [0.5, 0.5] and bootstrap_interval([]) is None
    assert quantile([0, 10], 0.25) == 2.5  # linear between neighbours


@pytest.fixture()
def two_models(tmp_path):
    """Two models' answers to the same three questions about two images."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "blue.png")
    files = {}
    for model in ("base", "r1"):
        path = tmp_path / f"{model}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in [
            {"id": "a", "image": "red.png", "question": "What color?", "response": f"{model}: red, with a cat"},
            {"id": "b", "image": "blue.png", "question": "Describe it.", "response": f"{model}: blue, \"quoted\",\n"
                                                                                    "two lines"},
            {"id": "c", "image": str(tmp_path / "red.png"), "question": "Any text?", "response": f"{model}: none"}]))
        files[model] = path
    return files


def _sheet(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _filled(rows: list[dict[str, str]], key: dict, labels: dict[tuple[str, str], str], out: Path) -> Path:
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            k = key["rows"][row["id"]]
            writer.writerow({**row, "hallucinated": labels[(k["model"], k["id"])]})
    return out


def test_blinded_export_is_scored_back_per_model(tmp_path, two_models):
    out = tmp_path / "human" / "sheet.csv"
    result = _invoke("export", "--responses", f"base={two_models['base']}", "--responses", f"r1={two_models['r1']}",
                     "--out", str(out), "--seed", "7", "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["blinded"] and written["rows"] == 6 and written["models"] == ["base", "r1"]
    rows = _sheet(out)
    assert list(rows[0]) == ["id", "image", "question", "response", "hallucinated", "notes"]
    assert [r["id"] for r in rows] == ["h001", "h002", "h003", "h004", "h005", "h006"]
    assert all(r["hallucinated"] == "" for r in rows)
    assert {r["image"] for r in rows} == {"../red.png", "../blue.png"}  # relative to the sheet
    assert any(r["response"] == 'base: blue, "quoted",\ntwo lines' for r in rows)  # CSV quoting round-trips
    key = json.loads((tmp_path / "human" / "sheet.key.json").read_text())
    order = [(key["rows"][r["id"]]["model"], key["rows"][r["id"]]["id"]) for r in rows]
    assert sorted(order) == [(m, i) for m in ("base", "r1") for i in "abc"]
    assert order != sorted(order)  # shuffled; the key is the only way back
    again = _invoke("export", "--responses", f"base={two_models['base']}", "--responses", f"r1={two_models['r1']}",
                    "--out", str(tmp_path / "again.csv"), "--seed", "7")
    assert again.exit_code == 0
    assert [r["response"] for r in _sheet(tmp_path / "again.csv")] == [r["response"] for r in rows]  # seeded

    page = (tmp_path / "human" / "sheet.html").read_text()
    assert page.count('<div class="card"') == 6 and page.count("data:image/png;base64,") == 6
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from a network
    assert "&quot;quoted&quot;" in page and "r1: red, with a cat" in page

    # annotator 1 marks base a, base b, r1 a; annotator 2 base a, r1 a. Majority (tie -> hallucinated):
    # base a, b hallucinated, c not -> 2/3; r1 a only -> 1/3; overall 3/6.
    # Cohen: agree on 5 of 6; yes shares 3/6 and 2/6 -> chance 1/2 * 1/3 + 1/2 * 2/3 = 1/2; kappa (5/6 - 1/2) / (1/2)
    one = {("base", "a"): "1", ("base", "b"): "Yes", ("base", "c"): "0", ("r1", "a"): "yes", ("r1", "b"): "NO",
           ("r1", "c"): "no"}
    two = {**one, ("base", "b"): "0"}
    s1 = _filled(rows, key, one, tmp_path / "ann1.csv")
    s2 = _filled(rows, key, two, tmp_path / "ann2.csv")
    scored = _invoke("score", "--labels", str(s1), "--labels", str(s2), "--key", str(tmp_path / "human" /
                     "sheet.key.json"), "--out", str(tmp_path / "human.json"), "--json")
    assert scored.exit_code == 0, scored.output
    data = json.loads(scored.stdout)
    assert data["n"] == 6 and data["hallucination_rate"] == 0.5 and data["ci95"] == wilson_interval(3, 6)
    assert data["agreement"]["method"] == "cohen" and data["agreement"]["kappa"] == pytest.approx(2 / 3)
    base_b = next(i for i, v in key["rows"].items() if (v["model"], v["id"]) == ("base", "b"))
    assert data["disagreements"] == [{"id": base_b, "labels": [1, 0], "model": "base"}]
    assert data["per_model"]["base"]["hallucination_rate"] == 2 / 3
    assert data["per_model"]["r1"] == {"n": 3, "hallucinated": 1, "hallucination_rate": 1 / 3,
                                       "ci95": wilson_interval(1, 3)}
    assert [a["hallucination_rate"] for a in data["per_annotator"]] == [0.5, 2 / 6]
    assert json.loads((tmp_path / "human.json").read_text()) == data

    # a third annotator like the second: base b is 1 of 3 -> not hallucinated by majority.
    # Fleiss: items agree fully except base b ((1 + 4 - 3) / 6 = 1/3) -> mean (5 + 1/3) / 6 = 8/9;
    # yes share 7/18 -> chance (49 + 121) / 324; kappa (288 - 170) / (324 - 170) = 118/154
    s3 = _filled(rows, key, two, tmp_path / "ann3.csv")
    three = _invoke("score", "--labels", str(s1), "--labels", str(s2), "--labels", str(s3), "--json")
    assert three.exit_code == 0, three.output
    data3 = json.loads(three.stdout)
    assert data3["agreement"]["method"] == "fleiss" and data3["agreement"]["kappa"] == pytest.approx(118 / 154)
    assert data3["hallucination_rate"] == 2 / 6 and "per_model" not in data3


def test_unblinded_export_keeps_ids_and_can_link_images(tmp_path, two_models):
    out = tmp_path / "sheet.csv"
    result = _invoke("export", "--responses", str(two_models["base"]), "--out", str(out), "--link-images", "--json")
    assert result.exit_code == 0, result.output
    assert "key" not in json.loads(result.stdout)
    rows = _sheet(out)
    assert [r["id"] for r in rows] == ["a", "b", "c"] and rows[0]["image"] == "red.png"
    page = (tmp_path / "sheet.html").read_text()
    assert 'src="red.png"' in page and "base64" not in page


def test_bad_sheets_name_the_file_row_and_column(tmp_path, two_models):
    sheet = tmp_path / "s.csv"
    sheet.write_text("id,image,question,response,hallucinated\na,x,q,r,1\nb,x,q,\"multi\nline\",maybe\n")
    bad = _invoke("score", "--labels", str(sheet))
    # the header is row 1, so the second record is row 3 even though its response spans two lines
    assert bad.exit_code == 2 and f"{sheet}, row 3 (id b): hallucinated is 'maybe'" in bad.stderr
    assert "Traceback" not in bad.output
    sheet.write_text("id,image,question,response,hallucinated\na,x,q,r,\n")
    assert "hallucinated is ''" in _invoke("score", "--labels", str(sheet)).stderr
    sheet.write_text("id,image,question,response\na,x,q,r\n")
    missing = _invoke("score", "--labels", str(sheet))
    assert missing.exit_code == 2 and "no column 'hallucinated'" in missing.stderr
    other = tmp_path / "o.csv"
    other.write_text("id,hallucinated\na,1\nz,0\n")
    sheet.write_text("id,hallucinated\na,1\nb,0\n")
    mismatch = _invoke("score", "--labels", str(sheet), "--labels", str(other))
    assert mismatch.exit_code == 2 and "missing ['b'], extra ['z']" in mismatch.stderr
    (tmp_path / "noimg.jsonl").write_text('{"id": 1, "question": "q", "response": "r"}\n')
    noimg = _invoke("export", "--responses", str(tmp_path / "noimg.jsonl"), "--out", str(tmp_path / "x.csv"))
    assert noimg.exit_code == 2 and "line 1: no image" in noimg.stderr
    (tmp_path / "gone.jsonl").write_text('{"id": 1, "image": "gone.png", "question": "q", "response": "r"}\n')
    gone = _invoke("export", "--responses", str(tmp_path / "gone.jsonl"), "--out", str(tmp_path / "x.csv"))
    assert gone.exit_code == 2 and str(tmp_path / "gone.png") in gone.stderr
