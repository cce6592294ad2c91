"""Human evaluation (the paper's MHumanEval protocol): people read each response next to its image and mark whether
it hallucinates; the score is the share of responses marked hallucinated.

`export_sheet` writes the annotators' sheet: a CSV with columns id, image, question, response, hallucinated (empty,
to fill in) and notes, and beside it an HTML page that shows every image with its question and response, offline
(images embedded as data URLs, or linked relatively), with buttons to mark each row and download the filled CSV.
Several models' responses are exported together blinded: rows shuffled with a seeded generator, ids replaced by
"h001", "h002", ..., and the key that maps a blinded id back to its model and original id written to a separate
file that annotators do not get.

`score_sheets` reads one or more annotators' filled sheets: `hallucinated` is 1/0/yes/no (any case); anything else,
an empty cell included, is an error naming the sheet, the row (as a spreadsheet numbers it, the header being row 1)
and the id. With several sheets a response's label is the annotators' majority and a tie counts as hallucinated
(the conservative reading); their agreement is Cohen's kappa for two sheets, Fleiss' kappa for more, and every row
they disagree on is listed. With the key, scores are given per model.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import mimetypes
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlaifv.eval.benchfiles import BadBenchmarkFile, MissingBenchmarkFile, load_json, read_jsonl, require_file
from rlaifv.eval.stats import cohen_kappa, fleiss_kappa, wilson_interval

COLUMNS = ("id", "image", "question", "response", "hallucinated", "notes")  # the first five are the protocol's
ID_KEYS = ("id", "index", "question_id")
QUESTION_KEYS = ("question", "query", "prompt", "text")
YES, NO = frozenset({"1", "yes"}), frozenset({"0", "no"})


def _first(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((row[k] for k in keys if k in row and row[k] is not None), None)


def read_response_rows(path: Path) -> list[dict[str, Any]]:
    """{id, image, question, response} per row of a responses JSONL (what `rlaifv eval generate` writes: id from
    id / index / question_id, else the line number; question from question / query / prompt / text)."""
    rows = read_jsonl(path, "responses: JSONL rows with image, question and response", required=("response",))
    out = []
    for number, row in enumerate(rows, 1):
        question, image = _first(row, QUESTION_KEYS), row.get("image")
        if question is None or not image:
            missing = " and ".join(k for k, v in (("image", image), ("question", question)) if not v)
            raise BadBenchmarkFile(f"{path}, line {number}: no {missing} (a human sheet shows the image, the "
                                   f"question and the response)")
        rid = _first(row, ID_KEYS)
        out.append({"id": str(number - 1 if rid is None else rid), "image": str(image), "question": str(question),
                    "response": str(row["response"])})
    return out


def _image_file(value: str, base: Path) -> Path | None:
    """The file an image value names (absolute, or relative to `base`); None for inline data."""
    if value.startswith("data:") or len(value) >= 1024:
        return None
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise MissingBenchmarkFile(path, "image of a response to annotate")
    return path


def _data_url(value: str, path: Path | None) -> str:
    if path is None:
        return value if value.startswith("data:") else f"data:image/jpeg;base64,{value}"
    mime = mimetypes.guess_type(path.name)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def export_sheet(sources: Sequence[tuple[str | None, Path]], out: Path, images: Path | None = None,
                 blind: bool | None = None, seed: int = 0, key: Path | None = None,
                 embed: bool = True) -> dict[str, Any]:
    """Write the sheet `out` (CSV), its HTML page (`out` with .html) and, when blinded, the key (JSON); returns
    what was written. `sources` are (model name, responses JSONL); `blind` defaults to "more than one source"."""
    blind = len(sources) > 1 if blind is None else blind
    rows = []
    for model, path in sources:
        base = images or Path(path).parent
        for row in read_response_rows(path):
            file = _image_file(row["image"], base)
            rows.append({**row, "model": model or Path(path).stem, "source": str(path), "file": file})
    if blind:
        random.Random(seed).shuffle(rows)
        width = max(3, len(str(len(rows))))
        for i, row in enumerate(rows, 1):
            row["original_id"], row["id"] = row["id"], f"h{i:0{width}d}"
    else:
        seen: set[str] = set()
        for row in rows:
            if row["id"] in seen:
                raise BadBenchmarkFile(f"id {row['id']} occurs twice in {row['source']}; export with --blind to "
                                       f"give every row its own id")
            seen.add(row["id"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet_dir = out.parent.resolve()

    def shown_path(row: dict[str, Any]) -> str:
        if row["file"] is None:
            return "inline"
        try:
            return os.path.relpath(row["file"].resolve(), sheet_dir)
        except ValueError:  # another drive (Windows)
            return str(row["file"].resolve())

    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row["id"], shown_path(row), row["question"], row["response"], "", ""])
    page = out.with_suffix(".html")
    cards = [{"id": r["id"], "image": shown_path(r), "question": r["question"], "response": r["response"],
              "src": _data_url(r["image"], r["file"]) if embed or r["file"] is None else shown_path(r)}
             for r in rows]
    page.write_text(render_page(out.name, cards), encoding="utf-8")
    written: dict[str, Any] = {"sheet": str(out), "page": str(page), "rows": len(rows), "blinded": blind,
                               "models": sorted({r["model"] for r in rows})}
    if blind:
        key = Path(key) if key is not None else out.with_name(out.stem + ".key.json")
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(json.dumps({"seed": seed, "sheet": out.name, "rows": {
            r["id"]: {"model": r["model"], "id": r["original_id"], "responses": r["source"]} for r in rows}},
            indent=1) + "\n", encoding="utf-8")
        written["key"] = str(key)
    return written


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Hallucination check: {title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 1em auto; padding: 0 1em; }}
.card {{ display: flex; gap: 1.2em; border-top: 1px solid #ccc; padding: 1em 0; }}
.card img {{ max-width: 420px; max-height: 420px; object-fit: contain; }}
.text {{ flex: 1; }} .response {{ white-space: pre-wrap; background: #f6f6f6; padding: .6em; }}
.done {{ background: #eefbea; }} .bar {{ position: sticky; top: 0; background: #fff; padding: .5em 0; }}
</style></head><body>
<h1>Does the response hallucinate?</h1>
<p>For each image, read the question and the response. Mark <b>yes</b> when the response states anything that is
not true of the image (objects, attributes, counts, positions, text, ...), <b>no</b> when everything it says holds.
Your marks stay in this browser; <b>Download</b> saves them as <code>{title}</code> with the
<code>hallucinated</code> column filled (1 = yes, 0 = no), to send back.</p>
<div class="bar"><button id="download">Download {title}</button> <span id="count"></span></div>
{cards}
<script id="rows" type="application/json">{rows}</script>
<script>
const rows = JSON.parse(document.getElementById("rows").textContent);
const store = "rlaifv-human:" + {title_js};
const marks = JSON.parse(localStorage.getItem(store) || "{{}}");
function refresh() {{
  let n = 0;
  for (const r of rows) {{
    const card = document.getElementById("card-" + r.id), m = marks[r.id] || {{}};
    for (const input of card.querySelectorAll("input[type=radio]")) input.checked = input.value === m.hallucinated;
    card.querySelector("textarea").value = m.notes || "";
    card.classList.toggle("done", m.hallucinated !== undefined);
    if (m.hallucinated !== undefined) n++;
  }}
  document.getElementById("count").textContent = n + " of " + rows.length + " marked";
}}
document.addEventListener("change", e => {{
  const id = e.target.dataset.id;
  if (!id) return;
  marks[id] = marks[id] || {{}};
  if (e.target.type === "radio") marks[id].hallucinated = e.target.value; else marks[id].notes = e.target.value;
  localStorage.setItem(store, JSON.stringify(marks));
  refresh();
}});
function cell(v) {{ v = String(v ?? ""); return /[",\\n\\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }}
document.getElementById("download").onclick = () => {{
  const lines = [{columns_js}.join(",")];
  for (const r of rows) {{
    const m = marks[r.id] || {{}};
    lines.push([r.id, r.image, r.question, r.response, m.hallucinated ?? "", m.notes ?? ""].map(cell).join(","));
  }}
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([lines.join("\\r\\n") + "\\r\\n"], {{type: "text/csv"}}));
  a.download = {title_js};
  a.click();
}};
refresh();
</script></body></html>
"""

CARD = """<div class="card" id="card-{id}"><img src="{src}" alt="image {id}">
<div class="text"><p><b>{id}</b> &middot; {question}</p><div class="response">{response}</div>
<p>Hallucinated? <label><input type="radio" name="h-{id}" value="1" data-id="{id}"> yes</label>
<label><input type="radio" name="h-{id}" value="0" data-id="{id}"> no</label></p>
<textarea rows="2" cols="60" placeholder="notes (optional)" data-id="{id}"></textarea></div></div>"""


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


def render_page(title: str, cards: Sequence[Mapping[str, str]]) -> str:
    """The annotators' page: one card per row, a sticky download button; no network access needed."""
    esc = html.escape
    body = "\n".join(CARD.format(id=esc(c["id"]), src=esc(c["src"]), question=esc(c["question"]),
                                 response=esc(c["response"])) for c in cards)
    rows = [{k: c[k] for k in ("id", "image", "question", "response")} for c in cards]
    return PAGE.format(title=esc(title), title_js=_script_json(title), cards=body, rows=_script_json(rows),
                       columns_js=_script_json(list(COLUMNS)))


def read_labels(path: Path) -> dict[str, bool]:
    """{id: hallucinated} of one filled sheet, in sheet order."""
    require_file(path, "a filled human-evaluation sheet (CSV with id and hallucinated columns)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for column in ("id", "hallucinated"):
            if column not in columns:
                raise BadBenchmarkFile(f"{path}: no column {column!r} (columns: {', '.join(columns) or 'none'})")
        labels: dict[str, bool] = {}
        for number, row in enumerate(reader, 2):
            rid = (row["id"] or "").strip()
            value = (row["hallucinated"] or "").strip().lower()
            if value not in YES | NO:
                raise BadBenchmarkFile(f"{path}, row {number} (id {rid or '?'}): hallucinated is "
                                       f"{row['hallucinated']!r}; expected 1, 0, yes or no")
            if rid in labels:
                raise BadBenchmarkFile(f"{path}, row {number}: id {rid} occurs twice")
            labels[rid] = value in YES
    if not labels:
        raise BadBenchmarkFile(f"{path}: no rows")
    return labels


def _rate(labels: Sequence[bool]) -> dict[str, Any]:
    k, n = sum(labels), len(labels)
    return {"n": n, "hallucinated": k, "hallucination_rate": k / n if n else None, "ci95": wilson_interval(k, n)}


def score_sheets(paths: Sequence[Path], key: Path | None = None) -> dict[str, Any]:
    """Hallucination rate with its Wilson 95 % interval; with several sheets, agreement and disagreements; with
    the key of a blinded export, the same per model."""
    sheets = [read_labels(p) for p in paths]
    ids = list(sheets[0])
    for path, sheet in zip(paths[1:], sheets[1:]):
        if set(sheet) != set(ids):
            missing, extra = sorted(set(ids) - set(sheet)), sorted(set(sheet) - set(ids))
            raise BadBenchmarkFile(f"{path} labels other rows than {paths[0]}: missing {missing[:5]}, extra "
                                   f"{extra[:5]}")
    votes = {i: [s[i] for s in sheets] for i in ids}
    # majority label; a tie between annotators counts as hallucinated
    final = {i: 2 * sum(v) >= len(v) for i, v in votes.items()}
    result: dict[str, Any] = {**_rate(list(final.values())), "annotators": len(sheets),
                              "sheets": [str(p) for p in paths]}
    mapping: dict[str, Any] = {}
    if key is not None:
        mapping = load_json(key, "key of a blinded human-evaluation export")["rows"]
        unknown = [i for i in ids if i not in mapping]
        if unknown:
            raise BadBenchmarkFile(f"{key}: no entry for sheet id(s) {', '.join(unknown[:5])}")
    if len(sheets) > 1:
        columns = [list(s[i] for i in ids) for s in sheets]
        kappa = cohen_kappa(*columns) if len(sheets) == 2 else fleiss_kappa([votes[i] for i in ids])
        split = [i for i in ids if len(set(votes[i])) > 1]
        result |= {
            "label_rule": "majority of the annotators; a tie counts as hallucinated",
            "agreement": {"method": "cohen" if len(sheets) == 2 else "fleiss", "kappa": kappa,
                          "observed": 1 - len(split) / len(ids)},
            "per_annotator": [{"sheet": str(p), **_rate(c)} for p, c in zip(paths, columns)],
            "disagreements": [{"id": i, "labels": [int(v) for v in votes[i]],
                               **({"model": mapping[i]["model"]} if mapping else {})} for i in split],
        }
    if mapping:
        models: dict[str, list[bool]] = {}
        for i in ids:
            models.setdefault(mapping[i]["model"], []).append(final[i])
        result["per_model"] = {m: _rate(labels) for m, labels in sorted(models.items())}
    return result
