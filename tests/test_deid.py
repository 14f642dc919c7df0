"""De-identification on site: offline engine, recognizers, medical terms, surrogates, fail-closed, audit log."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from cxrsynth.cli import main
from cxrsynth.errors import ConfigError, InputError
from cxrsynth.privacy.deid import (
    DeidConfig,
    DeidItem,
    deidentify_batch,
    deidentify_records,
    load_deid_config,
    scan_phi,
)
from cxrsynth.privacy.deid.deidentifier import Deidentifier, cached_deidentifier
from cxrsynth.privacy.deid.engine import load_spacy
from cxrsynth.privacy.deid.medical_terms import KEEP_TERMS


@pytest.fixture(scope="session")
def deid() -> Deidentifier:
    # The default configuration, shared with the CLI handlers through the cache (spaCy loads once).
    return cached_deidentifier(DeidConfig())


@pytest.fixture
def redactor(deid) -> Deidentifier:
    r = object.__new__(Deidentifier)
    r.__dict__.update(deid.__dict__)
    r.config = deid.config.model_copy(update={"mode": "redact"})
    return r


def covered(findings, text: str, phi: str) -> bool:
    start = text.index(phi)
    chars = set()
    for f in findings:
        chars.update(range(f.start, f.end))
    return all(i in chars for i in range(start, start + len(phi)))


def test_engine_builds_and_runs_with_network_blocked(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    fresh = Deidentifier(DeidConfig(spacy_pipes="all"))
    text = "Results e-mailed to jane.roe@stmarys-hospital.org and discussed with Dr. Okafor."
    res = fresh.deidentify_text(text)
    assert res.status == "ok"
    assert "jane.roe@stmarys-hospital.org" not in res.text and "Okafor" not in res.text
    assert res.counts.get("CONTACT", 0) >= 1
    assert attempts == []  # nothing even tried to connect (tldextract fallbacks would hide a failed fetch)


def test_missing_spacy_model_is_refused_not_downloaded():
    with pytest.raises(InputError, match="never downloaded"):
        load_spacy("en_core_web_trf_not_installed")


def test_spacy_model_from_local_folder(deid, tmp_path):
    deid.analyzer.nlp_engine.nlp["en"].to_disk(tmp_path / "model")
    nlp = load_spacy(str(tmp_path / "model"), "ner")
    assert nlp.pipe_names == ["tok2vec", "ner"] or nlp.pipe_names == ["ner"]


def test_config_rejects_unknown_key(tmp_path):
    p = tmp_path / "deid.yaml"
    p.write_text("mode: redact\nspacy_modle: en_core_web_lg\n")
    with pytest.raises(ConfigError, match="spacy_modle"):
        load_deid_config(p)
    p.write_text("mode: blackout\n")
    with pytest.raises(ConfigError, match="mode"):
        load_deid_config(p)


FORMS = [
    ("MRN: 48213377 seen today.", "48213377"),
    ("MR# 00778123", "00778123"),
    ("Acc# RAD-2021-004512 portable", "RAD-2021-004512"),
    ("Unit No. 123-45-67 on file", "123-45-67"),
    ("Accession E12345678 follows", "E12345678"),
    ("Compared with 03/14/2021.", "03/14/2021"),
    ("Compared with 14-Feb-2021.", "14-Feb-2021"),
    ("Compared with 18APR2021.", "18APR2021"),
    ("Compared with 28.03.2021.", "28.03.2021"),
    ("Seen on March 14 for cough.", "March 14"),
    ("Symptoms since the 25th of this month.", "25th"),
    ("Study of 2021-03-14 reviewed.", "2021-03-14"),
    ("d/w Dr. Smith at 14:32 by phone.", "14:32"),
    ("Called at 1432 hrs.", "1432"),
    ("A 93-year-old woman.", "93"),
    ("Patient is 97 yo.", "97"),
    ("Page me at pager 4-4321.", "4-4321"),
    ("Call (617) 555-0198 with results.", "(617) 555-0198"),
    ("d/w Dr. Smith at 14:32.", "Smith"),
    ("d/w dr smith re findings.", "smith"),
    ("Signed: Mary O'Neil, MD", "Mary O'Neil"),
    ("Reviewed by J. Abernathy, M.D. today", "J. Abernathy"),
    ("SMITH, JOHN\nPA chest", "SMITH, JOHN"),
    ("Patient's daughter Elaine at bedside.", "Elaine"),
    ("Electronically signed by: Priya Raman", "Priya Raman"),
    ("CC: Dr. Halvorsen; Dr. Mbeki", "Mbeki"),
    ("Transferred from St. Mary's Hospital yesterday.", "St. Mary's Hospital"),
    ("Ward 7B bed 12.", "7B"),
    ("Lives at 55 Fruit Street, Boston, MA 02114.", "55 Fruit Street, Boston, MA 02114"),
    ("Email jdoe@mercy.org for images.", "jdoe@mercy.org"),
]


@pytest.mark.parametrize("text,phi", FORMS, ids=[f[1] for f in FORMS])
def test_radiology_forms_are_found(deid, text, phi):
    assert covered(deid.find(text), text, phi), f"{phi!r} not covered in {text!r}"


def test_distractors_are_not_phi(deid):
    text = "Healed fracture of the 5th rib. Pain 7/10. ETT 4 cm above the carina. Stable since 2015. Level 2 trauma. T10 vertebra."
    assert deid.find(text) == []


def test_medical_terms_survive_and_titles_make_a_person(deid):
    terms = sorted(set(KEEP_TERMS))
    assert len(terms) >= 60
    for i in range(0, len(terms), 12):
        chunk = terms[i : i + 12]
        text = " ".join(f"Note {t} here." for t in chunk) + " Discussed with Dr. Okonkwo."
        res = deid.deidentify_text(text)
        assert res.status == "ok"
        for t in chunk:
            assert f"Note {t} here." in res.text, f"medical term {t!r} was changed"
        assert "Okonkwo" not in res.text
    res = deid.deidentify_text("Mr. Foley has a Foley catheter; Dr. Swan placed a Swan-Ganz catheter.")
    assert "Foley catheter" in res.text and "Swan-Ganz catheter" in res.text
    assert "Mr. Foley" not in res.text and "Dr. Swan " not in res.text


def test_header_deny_list_and_roster(tmp_path):
    roster = tmp_path / "roster.txt"
    roster.write_text("Quentin Abelard\nBeatrix Lowell\n")
    d = cached_deidentifier(DeidConfig(roster_file=roster, mode="redact"))
    meta = {
        "PatientName": "VANTERPOOL^ODESSA",
        "PatientID": "0044921",
        "PatientBirthDate": "19310407",
        "ReferringPhysicianName": "Quist^Alder",
    }
    text = "odessa vanterpool, id 0044921, born April 7, 1931; ref quist. Read with quentin abelard and Lowell."
    res = d.deidentify_text(text, meta)
    assert res.status == "ok"
    for phi in ("odessa", "vanterpool", "0044921", "April 7, 1931", "quist", "quentin", "abelard", "Lowell"):
        assert phi.lower() not in res.text.lower(), phi
    assert res.text == "[NAME], id [ID], born [DATE]; ref [NAME]. Read with [NAME] and [NAME]."


def test_a_time_surrogate_never_echoes_the_original():
    # One draw in 1440 gives a clock time back unchanged; over 4000 patients that happens ~94% of
    # the time unless the surrogate checks for it.
    from cxrsynth.privacy.deid.surrogates import Surrogates

    for text in ("5:03 AM.", "10am", "23:15"):
        outs = {Surrogates(b"0123456789abcdef", f"p{i}", 30).replace("TIME", text) for i in range(4000)}
        assert text not in outs and len(outs) > 10


def test_surrogates_consistent_per_patient_and_dates_keep_intervals(deid):
    a = deid.deidentify_text("Seen by Dr. Okonkwo on 03/01/2021.", patient_key="p1")
    b = deid.deidentify_text("Follow-up with Dr. Okonkwo on 03/15/2021.", patient_key="p1")
    c = deid.deidentify_text("Seen by Dr. Okonkwo on 03/01/2021.", patient_key="p2")
    name_a = re.search(r"Dr\. (\w+)", a.text).group(1)
    name_b = re.search(r"Dr\. (\w+)", b.text).group(1)
    assert name_a == name_b != "Okonkwo"
    from datetime import datetime

    da = datetime.strptime(re.search(r"\d\d/\d\d/\d{4}", a.text).group(0), "%m/%d/%Y")
    db = datetime.strptime(re.search(r"\d\d/\d\d/\d{4}", b.text).group(0), "%m/%d/%Y")
    assert (db - da).days == 14 and da != datetime(2021, 3, 1)
    assert c.text != a.text  # another patient, another surrogate or shift


def test_identifiers_keep_shape_and_old_ages_aggregate(deid):
    res = deid.deidentify_text("MRN: 48213377, Acc# RAD-2021-004512. A 96-year-old man.", patient_key="p9")
    mrn = re.search(r"MRN: (\S+),", res.text).group(1)
    acc = re.search(r"Acc# (\S+)\.", res.text).group(1)
    assert re.fullmatch(r"\d{8}", mrn) and mrn != "48213377"
    assert re.fullmatch(r"[A-Z]{3}-\d{4}-\d{6}", acc) and acc != "RAD-2021-004512"
    assert "90+-year-old" in res.text


def test_redaction_mode_uses_typed_tags(redactor):
    res = redactor.deidentify_text("d/w Dr. Okonkwo at 14:32 on 03/14/2021, MRN: 48213377.")
    assert res.text == "d/w Dr. [NAME] at [TIME] on [DATE], MRN: [ID]."


def test_fail_closed_on_error_timeout_length_and_header_leak(deid, monkeypatch):
    long = cached_deidentifier(DeidConfig(max_chars=100))
    r = long.deidentify_text("x" * 101)
    assert (r.status, r.text) == ("quarantined", None) and "over-long" in r.reason

    slow = Deidentifier.__new__(Deidentifier)
    slow.__dict__.update(deid.__dict__)
    slow.config = deid.config.model_copy(update={"timeout_s": 0.2})
    monkeypatch.setattr(slow, "find", lambda *a, **k: time.sleep(1.0) or [])
    r = slow.deidentify_text("Dr. Okonkwo")
    assert (r.status, r.text) == ("quarantined", None) and "timeout" in r.reason

    def boom(*a, **k):
        raise RuntimeError("Okonkwo broke it")

    monkeypatch.setattr(slow, "find", boom)
    r = slow.deidentify_text("Dr. Okonkwo")
    assert (r.status, r.text, r.reason) == ("quarantined", None, "error: RuntimeError")  # no PHI from the message

    leaky = Deidentifier.__new__(Deidentifier)
    leaky.__dict__.update(deid.__dict__)
    monkeypatch.setattr(leaky, "_replace", lambda text, *a: (text, []))
    r = leaky.deidentify_text("Patient Vanterpool.", {"PatientName": "VANTERPOOL^ODESSA"})
    assert r.status == "quarantined" and r.text is None
    assert r.reason == "header PHI still present after replacement (PatientName)"


def test_batch_workers_audit_log_has_no_phi(deid, tmp_path):
    names = ["Okonkwo", "Vanterpool", "Lindqvist", "Abernathy"]
    items = [
        DeidItem(
            f"r{i}",
            f"Discussed with Dr. {n} at 14:{10 + i}. MRN: {4821337 + i}.",
            {"PatientID": f"{4821337 + i}"},
            f"p{i}",
        )
        for i, n in enumerate(names * 3)
    ]
    log = tmp_path / "audit.jsonl"
    one = deidentify_batch(items, deid.config.model_copy(update={"batch_size": 4}), log, workers=1)
    two = deidentify_batch(items, deid.config.model_copy(update={"batch_size": 4}), None, workers=2)
    assert [r.text for r in one] == [r.text for r in two]
    assert all(r.status == "ok" for r in one)
    raw = log.read_text()
    for n in names + ["4821337", "r0", "14:10"]:
        assert n not in raw
    lines = [json.loads(x) for x in raw.splitlines()]
    run, reports = lines[0], lines[1:]
    assert run["kind"] == "run" and len(run["config_hash"]) == 64 and run["versions"]["presidio_analyzer"]
    assert run["versions"]["spacy_model"].endswith("3.8.0") and run["reports"] == len(items)
    assert len(reports) == len(items) and all(r["counts"]["NAME"] == 1 and r["status"] == "ok" for r in reports)
    assert len({r["key"] for r in reports}) == len(items)


def test_deidentify_records_on_phantom_data(deid, tmp_path):
    from cxrsynth.data.phantom import make_phantom

    records = make_phantom(8, sites=2, seed=3, image_size=16, lateral=False)
    records[1] = records[1].with_(findings="x" * (deid.config.max_chars + 1))
    clean, quarantined = deidentify_records(records, deid.config, tmp_path / "audit.jsonl")
    assert quarantined == [records[1].record_id]
    assert len(clean) == len(records) - 1
    for before, after in zip([r for r in records if r.record_id not in quarantined], clean):
        assert after.phi_meta == {} and after.record_id == before.record_id and after.labels == before.labels
        assert after.impression or not before.impression
        for field in ("PatientName", "PatientID", "AccessionNumber"):
            for token in re.split(r"[\^\s]+", before.phi_meta.get(field, "")):
                if len(token) >= 3:
                    assert token.lower() not in (after.findings + after.impression).lower(), field


def test_radiology_words_after_a_lone_letter_are_not_a_person(deid):
    # spaCy reads "a. Displaced" as an initial and a surname; generated word salad makes such
    # pairs, and a PHI scan that cries wolf on them blocks honest releases.
    texts = [
        "Normal heart widened a. Displaced acute fracture.",
        "Effusion a. Plate-like atelectasis. Svc tube noted.",
    ]
    assert scan_phi(texts) == [[], []]
    assert [f.type for f in scan_phi(["Seen by a. Lindqvist today."])[0]] == ["NAME"]


def test_scan_phi_reports_offsets_not_text(deid):
    out = scan_phi(["No acute process.", "Call Dr. Lindqvist at 14:32."])
    assert out[0] == []
    types = {f.type for f in out[1]}
    assert {"NAME", "TIME"} <= types
    assert all(isinstance(f.start, int) and 0 < f.score <= 1 for f in out[1])


def test_cli_run_and_bad_input(deid, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        json.dumps({"id": "a", "text": "Seen by Dr. Lindqvist on 03/14/2021.", "meta": {"PatientID": "991"}})
        + "\n"
        + json.dumps({"id": "b", "text": "y" * (deid.config.max_chars + 5)})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    assert main(["--quiet", "deid", "run", "--in", str(inp), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["status"] == "ok" and "Lindqvist" not in rows[0]["text"] and "03/14/2021" not in rows[0]["text"]
    assert (
        rows[1] == {"id": "b", "text": None, "status": "quarantined", "reason": rows[1]["reason"]}
        and rows[1]["reason"]
    )
    assert (tmp_path / "out.jsonl.audit.jsonl").exists()

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": 5}\n')
    assert main(["deid", "run", "--in", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.jsonl, line 2" in capsys.readouterr().err
    bad.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    assert main(["deid", "run", "--in", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "line 1: not UTF-8" in capsys.readouterr().err
