"""Text leakage and PHI: planted rare training sentences and planted PHI are caught."""

from test_audit_support import varied_records

from cxrsynth.config import AuditPolicy
from cxrsynth.data.records import Record
from cxrsynth.privacy.audit.phi import phi_scan
from cxrsynth.privacy.audit.text import near_duplicates, rare_ngram_leaks


def _syn(i, findings, impression="No acute cardiopulmonary process."):
    return Record(f"syn{i}", f"syn{i}", f"syn{i}", site="synthetic", findings=findings, impression=impression)


def test_planted_rare_sentence_is_a_leak_common_phrases_are_not():
    train = varied_records(60, 1, prefix="t")
    holdout = varied_records(30, 2, prefix="h")
    rare_sentence = train[7].impression  # this patient's own sentence (see varied_records)
    common = "Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax."
    synthetic = [
        _syn(0, common),
        _syn(1, common + " " + rare_sentence),
        _syn(2, "Mediastinal contours are unremarkable. No focal consolidation."),
    ]
    out = rare_ngram_leaks(synthetic, train, holdout, AuditPolicy())
    assert out["leaking_reports"] == ["syn1"]
    assert out["leaked_ngrams"] > 0
    # The same n-gram in 2 training reports is no longer rare at k=2, but is at k=3.
    train2 = train + [train[7].with_(record_id="dup", patient_id="dup")]
    assert rare_ngram_leaks(synthetic, train2, holdout, AuditPolicy())["leaking_reports"] == []
    assert rare_ngram_leaks(synthetic, train2, holdout, AuditPolicy(rare_ngram_k=3))["leaking_reports"] == ["syn1"]


def test_near_duplicates_against_holdout_baseline():
    train = varied_records(80, 1, prefix="t")
    holdout = varied_records(40, 2, prefix="h")
    copies = [_syn(i, r.findings, r.impression) for i, r in enumerate(train[:20])]
    fresh = [_syn(100 + i, r.findings, r.impression) for i, r in enumerate(varied_records(20, 5, prefix="f"))]
    out = near_duplicates(copies + fresh, train, holdout, AuditPolicy())
    assert set(out["duplicated_reports"]) >= {f"syn{i}" for i in range(20)}
    assert out["rate"] > out["holdout_rate"] + 0.3


def test_planted_phi_is_found_and_clean_reports_pass():
    clean = [_syn(i, "Heart size is normal. The lungs are clear.") for i in range(3)]
    planted = _syn(
        9, "Patient John Smithers, MRN 4829173, seen on 03/14/2021 by Dr. Alice Weber. Heart size is normal."
    )
    ok = phi_scan(clean)
    assert ok["passed"] and ok["findings"] == 0
    bad = phi_scan(clean + [planted])
    assert not bad["passed"] and bad["reports"] == ["syn9"] and bad["findings"] >= 2
    assert "Smithers" not in str(bad)  # findings carry types and IDs, never the text


def test_phi_scan_fails_closed_when_the_analyzer_breaks(monkeypatch):
    import cxrsynth.privacy.audit.phi as phi

    def broken():
        raise ImportError("cxrsynth.privacy.deid is not installed")

    monkeypatch.setattr(phi, "_scanner", broken)
    out = phi.phi_scan([_syn(0, "Heart size is normal.")])
    assert out["passed"] is False and "cxrsynth.privacy.deid" in out["reason"]
