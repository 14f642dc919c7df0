"""The gold corpus and `cxrsynth deid eval`: size, held-out part, and the quality targets of issue 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrsynth.cli import main
from cxrsynth.privacy.deid import DeidConfig
from cxrsynth.privacy.deid.deidentifier import Finding, cached_deidentifier
from cxrsynth.privacy.deid.evaluate import evaluate_gold, read_gold, score

GOLD = Path(__file__).parent.parent / "privacy" / "deid" / "gold"


def load(name):
    return read_gold(GOLD / name)


def test_gold_corpus_size_and_held_out_part():
    tune, held = load("tune.jsonl"), load("heldout.jsonl")
    rows = tune + held
    assert len(rows) >= 60 and sum(len(r["gold"]) for r in rows) >= 500
    assert len(held) >= 30 and not {r["id"] for r in tune} & {r["id"] for r in held}
    for r in rows:
        for s in r["gold"] + r["keep"]:
            assert 0 <= s["start"] < s["end"] <= len(r["text"])
            assert r["text"][s["start"] : s["end"]].strip() == r["text"][s["start"] : s["end"]]
    assert {g["type"] for r in rows for g in r["gold"]} >= {"NAME", "ID", "DATE", "TIME", "AGE", "CONTACT", "LOCATION"}


def test_score_counts_partial_cover_as_missed_and_damaged_keeps():
    row = {
        "text": "Dr. John Smith saw a Foley catheter",
        "gold": [{"start": 4, "end": 14, "type": "NAME"}],
        "keep": [{"start": 21, "end": 35}],
    }
    partial = score([row], [[Finding("NAME", 9, 14, 1.0)]])
    assert partial["per_type"]["NAME"]["recall"] == 0.0 and partial["per_type"]["NAME"]["precision"] == 1.0
    full = score([row], [[Finding("NAME", 4, 9, 1.0), Finding("NAME", 9, 14, 1.0), Finding("NAME", 21, 26, 0.5)]])
    assert full["per_type"]["NAME"]["recall"] == 1.0 and full["keep_damaged"] == 1
    assert full["per_type"]["NAME"]["precision"] == pytest.approx(2 / 3)


def test_held_out_meets_issue_targets():
    result = evaluate_gold(GOLD / "heldout.jsonl", cached_deidentifier(DeidConfig()))
    per = result["per_type"]
    for t in ("NAME", "ID", "DATE"):
        assert per[t]["recall"] >= 0.99, (t, per[t])
    assert result["overall"]["recall"] >= 0.98
    assert result["keep_damaged"] == 0


def test_cli_eval_prints_and_writes_json(tmp_path, capsys):
    gold = tmp_path / "g.jsonl"
    gold.write_text("".join(json.dumps(r) + "\n" for r in load("tune.jsonl")[:5]))
    out = tmp_path / "m.json"
    assert main(["deid", "eval", "--gold", str(gold), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recall" in printed and "keep spans damaged" in printed
    data = json.loads(out.read_text())
    assert data["reports"] == 5 and "NAME" in data["per_type"] and data["versions"]["spacy"]
    page = (tmp_path / "m.html").read_text()
    assert 'src="data:image/png;base64,' in page and "keep" in page
    gold.write_text('{"id": "x", "text": "abc", "gold": [{"start": 2, "end": 9, "type": "NAME"}]}\n')
    assert main(["deid", "eval", "--gold", str(gold)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_no_surrogate_echoes_its_original():
    # Coverage is necessary but not sufficient: a surrogate could echo the original (a number kept
    # inside a name, a year-less date shifted by whole years, "10am" drawn again).
    from cxrsynth.privacy.deid.surrogates import Surrogates

    deid = cached_deidentifier(DeidConfig())
    echoes = []
    surrogates = [Surrogates(deid.secret, key, deid.config.max_shift_days) for key in ("p1", "p2", "p3")]
    for row in load("heldout.jsonl")[::2] + load("tune.jsonl")[::4]:
        found = deid.find(row["text"], row["meta"] or None)
        for sur in surrogates:
            for f in found:
                original = row["text"][f.start : f.end]
                if f.type != "AGE" and sur.replace(f.type, original) == original:
                    echoes.append((row["id"], f.type, original))
    assert echoes == []
