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


def _reference_checks(synthetic, train, holdout, policy):
    """The text checks as an index over the training reports computes them (what the audit did
    before it read the training reports once against an index of the asked-about ones)."""
    from collections import Counter

    from datasketch import MinHashLSH

    from cxrsynth.privacy.audit.text import NUM_PERM, _minhash, ngrams

    n, k = policy.rare_ngram_n, policy.rare_ngram_k
    df = Counter()
    for r in train:
        df.update(ngrams(r.report, n))
    leaks = [sum(1 for g in ngrams(r.report, n) if 0 < df[g] < k) for r in synthetic + holdout]
    lsh = MinHashLSH(threshold=policy.near_duplicate_jaccard, num_perm=NUM_PERM)
    for i, r in enumerate(train):
        m = _minhash(r.report)
        if m is not None:
            lsh.insert(str(i), m)
    dups = [(m := _minhash(r.report)) is not None and bool(lsh.query(m)) for r in synthetic + holdout]
    return leaks, dups


def test_the_streamed_text_checks_find_what_an_index_over_the_training_reports_finds():
    from cxrsynth.data.phantom import make_phantom

    train = make_phantom(300, sites=1, seed=11, image_size=16, lateral=False)
    holdout = make_phantom(60, sites=1, seed=12, image_size=16, lateral=False)
    # Synthetic reports: copies, spliced halves and fresh ones, so both checks find some and miss some.
    fresh = make_phantom(40, sites=1, seed=13, image_size=16, lateral=False)
    synthetic = [_syn(i, r.findings, r.impression) for i, r in enumerate(train[:15])]
    synthetic += [_syn(100 + i, a.findings, b.impression) for i, (a, b) in enumerate(zip(fresh, train[15:]))]
    synthetic += [_syn(200 + i, r.findings, r.impression) for i, r in enumerate(fresh)]
    policy = AuditPolicy()
    leaks, dups = _reference_checks(synthetic, train, holdout, policy)
    rare = rare_ngram_leaks(synthetic, train, holdout, policy)
    near = near_duplicates(synthetic, train, holdout, policy)
    n = len(synthetic)
    assert 0 < sum(c > 0 for c in leaks[:n]) < n and 0 < sum(dups[:n]) < n  # the case is not trivial
    assert rare["leaking_reports"] == [r.record_id for r, c in zip(synthetic, leaks) if c]
    assert rare["leaked_ngrams"] == sum(leaks[:n])
    assert rare["holdout_leak_rate"] == sum(c > 0 for c in leaks[n:]) / len(holdout)
    assert near["duplicated_reports"] == [r.record_id for r, d in zip(synthetic, dups) if d]
    assert near["holdout_rate"] == sum(dups[n:]) / len(holdout)


def test_the_text_checks_hold_no_more_memory_for_ten_times_the_training_reports(monkeypatch):
    import tracemalloc

    import cxrsynth.privacy.audit.text as text

    monkeypatch.setattr(text, "DEDUP_LIMIT", 256)  # the repeats remembered: a fixed amount

    from cxrsynth.data.phantom import make_phantom

    base = make_phantom(40, sites=1, seed=14, image_size=16, lateral=False)
    synthetic = [_syn(i, r.findings, r.impression) for i, r in enumerate(base[:20])]
    holdout = base[20:]

    def unique_reports(n):  # every report its own words: the case where an index over them grows
        for i in range(n):
            words = " ".join(f"w{i}x{j}" for j in range(60))
            yield Record(f"t{i}", f"t{i}", f"t{i}", findings=f"There is {words}.", impression=f"Seen {i} {words}.")

    peaks = []
    for n in (300, 3000):
        tracemalloc.start()
        rare_ngram_leaks(synthetic, list_free(unique_reports(n)), holdout, AuditPolicy())
        near_duplicates(synthetic, list_free(unique_reports(n)), holdout, AuditPolicy())
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0], peaks


class list_free:
    """A sequence read once in order, as a lazy view is: holds no report."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)
