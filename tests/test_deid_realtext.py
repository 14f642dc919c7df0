"""Issue 18 on report text: names in any case and by context, times after dates, header lines,
no damage to report words, surrogates that never collide, the same output on every run at a
site, and the real-text corpus builder (run here on a tiny CSV the test writes itself)."""

from __future__ import annotations

import csv
import json

import pytest

from cxrsynth.privacy.deid import DeidConfig
from cxrsynth.privacy.deid.deidentifier import Deidentifier, cached_deidentifier
from cxrsynth.privacy.deid.gold import build_realtext
from cxrsynth.privacy.deid.lexicon import kind
from cxrsynth.privacy.deid.surrogates import Surrogates


@pytest.fixture(scope="module")
def deid():
    return cached_deidentifier(DeidConfig(ephemeral_secret=True))


def covered(findings, text, phi):
    start = text.index(phi)
    cover = {i for f in findings for i in range(f.start, f.end)}
    return all(i in cover for i in range(start, start + len(phi)))


LEAK_CLASSES = [
    ("no acute disease.\n\nwill taylor, md / d: 20090916 0438 / t: 20090916 0512\n", ["will taylor", "0438"]),
    ("name: rice, brian   mrn 4412093\nfindings: clear lungs.", ["rice, brian", "4412093"]),
    ("Findings discussed with PA K. Price at 14:02.", ["K. Price"]),
    ("Case reviewed with nurse Joseph A. Martin, who agrees.", ["Joseph A. Martin"]),
    ("Per RN ahmed martinez, the line was placed today.", ["ahmed martinez"]),
    ("PATIENT: WALKER^DONALD^K [1800764]\nEXAM: chest", ["WALKER^DONALD^K", "1800764"]),
    ("Attending: May Small, MD\nResident: Will Lung MD", ["May Small", "Will Lung"]),
    ("EXAM DATE: 11-Mar-2010 0835\nStudy: Chest", ["11-Mar-2010", "0835"]),
    ("Comparison: PA and lateral chest radiographs 3/22.", ["3/22"]),
    (
        "ESKENAZI HEALTH - DEPARTMENT OF RADIOLOGY\n455 E Michigan St, Indianapolis, IN 46202\nName: x",
        ["ESKENAZI HEALTH", "455 E Michigan St, Indianapolis, IN 46202"],
    ),
    ("accession number: rad-2013-25133\nexam: chest", ["rad-2013-25133"]),
    # lone names that are also words, read from the phrase around them, in any case
    ("RESULTS WERE CALLED TO NURSE YOUNG BY TELEPHONE AT 0428.", ["YOUNG"]),
    ("no acute disease. case reviewed with bell, who agrees.", ["bell"]),
    ("Per NP Small, the patient fell at home.", ["Small"]),
    ("CASE REVIEWED WITH PRIYA HILL.\nIMPRESSION: CLEAR.", ["PRIYA HILL"]),
    ("FINDINGS DISCUSSED WITH TECHNOLOGIST PRIYA R. BEST ON JUL 8TH.", ["PRIYA R. BEST"]),
    # sign-offs without a credential, given names no census list holds, "last, first" at a field end
    ("NO ACUTE DISEASE.\n\n/S/ HEATHER LEWIS\nRADIOLOGIST\n", ["HEATHER LEWIS"]),
    ("No acute disease.\n\n- carol g. lamb\n", ["carol g. lamb"]),
    ("FINALIZED: 12/23/2005 2316 BY ANDERSON, PRIYA\n", ["ANDERSON, PRIYA"]),
    ("Referring physician: sky parsons\nLOC: ICU", ["sky parsons"]),
    ("Name: brown, sky   Date of Birth: 11-Jun-1958", ["brown, sky"]),
    ("Read by: parsons, sky (pager 11810)\n", ["parsons, sky"]),
    # partial dates on comparison and exam lines, and before a time
    ("PRIOR STUDIES: Comparison is 8/15 to chest radiograph.", ["8/15"]),
    ("Exam: PA lateral chest x-ray , 9/8 0424 hours", ["9/8"]),
    ("PRIOR STUDIES: CT urogram 4/19\nFINDINGS: clear.", ["4/19"]),
    ("greenfield hospital - radiology\n5039 park dr, muncie, in 47682\npt: kidd", ["5039 park dr, muncie, in 47682"]),
]


@pytest.mark.parametrize("text,phis", LEAK_CLASSES, ids=[p[0] for _, p in LEAK_CLASSES])
def test_leak_classes_of_issue_18_are_found(deid, text, phis):
    found = deid.find(text)
    for phi in phis:
        assert covered(found, text, phi), (phi, [(text[f.start : f.end], f.source) for f in found])


def test_report_words_that_look_like_names_are_left_alone(deid):
    text = (
        "EXAM: Xray Chest PA and Lateral\nPRIOR STUDIES: None.\nMEDICAL RECORD #: 4412093\nINDICATION: Lung Cancer, followup.\n"
        "FINDINGS: Size is normal. Streaky asymmetric opacities. Foley catheter noted. Calcified Ghon focus. "
        "Small left effusion. May represent atelectasis.\nIMPRESSION: Stable.\n"
        "NORMAL HEART SIZE. LEFT CLAVICLE, BETTER SEEN ON PRIOR.\n"
    )
    res = deid.deidentify_text(text, {"PatientName": "OKAFOR^NGOZI", "PatientID": "4412093"})
    assert res.status == "ok"
    for words in (
        "Xray Chest PA and Lateral",
        "PRIOR STUDIES:",
        "MEDICAL RECORD #:",
        "Lung Cancer",
        "Size is normal",
        "Streaky asymmetric",
        "Foley catheter",
        "Ghon focus",
        "Small left effusion",
        "May represent",
        "LEFT CLAVICLE, BETTER SEEN",
    ):
        assert words in res.text, words
    assert "4412093" not in res.text


def test_report_words_near_phi_are_left_alone(deid):
    text = (
        "Saint Vincent Hospital - RADIOLOGY\n1945 North Oak Blvd\nPhone: 869.664.3202\nName: WHITE^AHMED^A\n"
        "REASON FOR EXAM: Pt POD 6 s/p repair. Followup +PPD.\nCOMPARISON: Chest x-ray 6/8 views.\n"
        "Study: PA and lateral chest 5/28/2005 at 13:04 comparison CT from May 21 2005\n"
        "Second view: lateral chest Nov 9, 2014 at 0725 comparison chest CT from Oct 2 2014\n"
        "Indication: pneumonia, cough AND CHILLS, NONPROD. Left HIP UNILAT COMPLETE.\n"
        "Findings: CT scan with IV contrast may help. Shortness of breath workup. The images are unavailable due to "
        "an upgrade of the AGFA PACS. Lungs per day appear clear. The 9th posterior lateral right rib is expanded.\n"
        "Wet read by A. Lopez on Jul 20 2015 at 11:52.\n4708 W Market Dr\nPh: 615-513-7352\n"
        "NAME: mcintyre, robert   [ID: 68443643]   DOB: 27-Dec-1976\n"
    )
    found = deid.find(text)
    for word in (
        "RADIOLOGY",
        "Phone",
        "Name",
        "POD 6",
        "Followup",
        "PPD",
        "6/8 views",
        "comparison CT",
        "comparison chest CT",
        "CHILLS, NONPROD",
        "UNILAT",
        "IV contrast",
        "breath workup",
        "AGFA PACS",
        "per day",
        "9th posterior",
        "Lopez on",
        "Ph:",
        "[ID:",
    ):
        start, end = text.index(word), text.index(word) + len(word)
        start = start + 6 if word == "Lopez on" else start  # only "on"
        assert not any(f.start < end and start < f.end for f in found), (
            word,
            [(text[f.start : f.end], f.source) for f in found],
        )
    for phi in (
        "Saint Vincent Hospital",
        "1945 North Oak Blvd",
        "WHITE^AHMED^A",
        "5/28/2005",
        "13:04",
        "0725",
        "Nov 9, 2014",
        "A. Lopez",
        "Jul 20 2015",
        "mcintyre, robert",
        "68443643",
    ):
        assert covered(found, text, phi), phi


def test_clinical_compounds_in_capitals_are_no_name(deid):
    # In an all-capitals report spaCy reads a run of prefixed or hyphenated clinical words as a
    # person; no dictionary lists such compounds, so they looked like two unknown name words.
    text = (
        "FINDINGS: THE CARDIOMEDIASTINAL CONTOURS ARE WITHIN NORMAL LIMITS. THE LUNGS ARE HYPEREXPANDED AS SEEN IN COPD. "
        "UNCHANGED PERIHILAR BRONCHO-VASCULAR THICKENING. FEW CALCIFIED GRANULOMAS. NO PLEURAL EFFUSION.\n"
        "IMPRESSION: 1. COPD. 2. STABLE BIAPICAL FIBRO-RETICULAR SCARRING. SCATTERED CALCIFIED GRANULOMAS.\n"
    )
    assert deid.find(text) == []
    for word in (
        "biapical",
        "infrahilar",
        "hyperexpanded",
        "fibro-reticular",
        "pleuro-parenchymal",
        "interstitial-alveolar",
    ):
        assert kind(word) == "word_only", word
    # names keep their kind: census names, double-barrelled names, surnames no list holds
    assert [kind(w) for w in ("Hostetler", "Garcia-Lopez", "Paramore", "Bisping")] == [
        "name_only",
        "unknown",
        "name_only",
        "unknown",
    ]


def test_a_header_name_word_at_a_sentence_start_or_in_capitals_is_the_word(deid):
    meta = {"PatientName": "SHORT^JOY"}
    res = deid.deidentify_text("Indication: Short of breath.\nFindings: Clear lungs, seen by Short today.", meta)
    assert res.status == "ok" and "Short of breath" in res.text and "by Short" not in res.text
    res = deid.deidentify_text("INDICATION: SHORT OF BREATH. POST OP DAY 2. PATIENT: SHORT, JOY", meta)
    assert res.status == "ok" and "SHORT OF BREATH" in res.text and "SHORT, JOY" not in res.text


def test_header_name_that_is_also_a_word_goes_beside_its_other_half(deid):
    res = deid.deidentify_text("Patient Carol Small seen. small left effusion.", {"PatientName": "SMALL^CAROL"})
    assert (
        res.status == "ok"
        and "Carol" not in res.text
        and "Small" not in res.text
        and "small left effusion" in res.text
    )


def test_a_user_name_that_spells_a_report_word_stays_the_word(deid):
    # Other mentions of a name include user names made from it ("jkowalski"); some of those spell a
    # report word ("Linda Ung" -> "lung", "Carl Lear" -> "clear"), and a city with its state that a
    # shape rule reads as "last, first" gives one too ("Lincoln, IL" -> "ill").
    cases = [
        ("Findings discussed with Dr. Carl Lear at 14:02.\nThe lungs are clear.", "Carl Lear", "clear"),
        ("Case reviewed with Dr. Linda Ung.\nThe right lung is hyperexpanded.", "Linda Ung", "lung"),
        ("Per RN Vince Ein, the line was flushed.\nNo filling defect in the vein.", "Vince Ein", "vein"),
        (
            "Greenfield Clinic\n12 North Oak Blvd, Lincoln, IL 45402\nFINDINGS: There is an ill-defined opacity.",
            "12 North Oak Blvd, Lincoln, IL 45402",
            "ill-defined",
        ),
    ]
    for text, phi, word in cases:
        found = deid.find(text)
        start = text.index(word, text.index(phi) + len(phi))
        assert covered(found, text, phi), (phi, [(text[f.start : f.end], f.source) for f in found])
        assert not any(f.start < start + len(word) and start < f.end for f in found), (
            word,
            [(text[f.start : f.end], f.source) for f in found],
        )
    # a user name that is no word still goes with its name
    text = "Impression: stable.\nRad: jkowalski (Jan Kowalski) x 41120"
    assert covered(deid.find(text), text, "jkowalski")


def test_a_surrogate_that_collides_with_the_records_phi_is_redrawn():
    secret = b"collision-test-secret-0123456789"
    # a date whose first surrogate draw carries the patient's given name "Jun"
    from datetime import date, timedelta

    for day in range(365):
        value = (date(2019, 1, 1) + timedelta(days=day)).strftime("%b %d, %Y")
        if "Jun" in Surrogates(secret, "P-7").replace("DATE", value) and "Jun" not in value:
            break
    else:
        pytest.skip("no colliding draw for this secret")
    text = f"Compared with {value}."
    config = DeidConfig(ephemeral_secret=True)
    deid = Deidentifier(config)
    deid.secret = secret
    res = deid.deidentify_text(text, {"PatientName": "LEE^JUN", "PatientID": "P-7"})
    assert res.status == "ok", res.reason
    assert "Jun" not in res.text and value not in res.text


def test_same_output_on_two_runs_with_the_site_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("CXRSYNTH_DEID_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    text = "Dr. Okonkwo reviewed the 03/14/2021 study at 14:32. MRN 44120931."
    a = Deidentifier(DeidConfig()).deidentify_text(text, {"PatientID": "44120931"})
    b = Deidentifier(DeidConfig()).deidentify_text(text, {"PatientID": "44120931"})
    assert a.status == b.status == "ok" and a.text == b.text and "Okonkwo" not in a.text
    secret = tmp_path / "cfg" / "cxrsynth" / "deid_site_secret.key"
    assert secret.is_file() and oct(secret.stat().st_mode & 0o777) == "0o600"
    assert Deidentifier(DeidConfig()).secret_source == "site-default"
    fresh = {
        Deidentifier(DeidConfig(ephemeral_secret=True)).deidentify_text(text, {"PatientID": "44120931"}).text
        for _ in range(3)
    }
    assert len(fresh) > 1  # opted out: a new secret each run


def write_csv(path, n=30):
    cols = ["uid", "patient_id", "findings", "impression", "indication", "comparison", "exam_caption"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for i in range(n):
            w.writerow(
                {
                    "uid": str(i),
                    "patient_id": f"p{i}",
                    "findings": "The XXXX are clear. Pulmonary XXXX are normal.",
                    "impression": "No acute disease.",
                    "indication": "XXXX-year-old male with cough",
                    "comparison": "Chest radiograph dated XXXX, XXXX.",
                    "exam_caption": "Xray Chest PA and Lateral XXXX at XXXX hours",
                }
            )


def test_realtext_builder_plants_annotated_phi_and_keeps_every_other_word(tmp_path):
    write_csv(tmp_path / "r.csv")
    out = tmp_path / "corpus"
    counts = build_realtext.build(tmp_path / "r.csv", out, 30, 18)
    assert counts["tune"]["reports"] + counts["heldout"]["reports"] == 30 and counts["heldout"]["reports"] > 0
    rows = [json.loads(line) for f in ("tune.jsonl", "heldout.jsonl") for line in (out / f).read_text().splitlines()]
    again = [json.loads(line) for f in ("tune.jsonl", "heldout.jsonl") for line in (out / f).read_text().splitlines()]
    assert rows == again
    for r in rows:
        assert "XXXX" not in r["text"]
        for g in r["gold"]:
            value = r["text"][g["start"] : g["end"]]
            assert value.strip() == value and value
            assert not any(k["start"] < g["end"] and g["start"] < k["end"] for k in r["keep"])
        assert {g["type"] for g in r["gold"]} & {"DATE", "NAME"}
    assert {r["id"] for r in rows if r["part"] == "heldout"} == {
        f"iu-{i}" for i in range(30) if build_realtext.part_of(str(i))
    }


def test_realtext_builder_marks_a_day_the_source_left_as_a_date(tmp_path):
    # The source's scrubber left a day of the month written as an ordinal; it is PHI of the
    # original record ("the 22nd" is planted as a date too), while ordinals that count ribs are words.
    cols = ["uid", "patient_id", "findings", "impression", "indication", "comparison", "exam_caption"]
    with (tmp_path / "r.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for i in range(12):
            w.writerow(
                {
                    "uid": str(i),
                    "patient_id": f"p{i}",
                    "findings": "Old fractures of the left 5th, 6th and 7th ribs. The 9th posterior rib is intact.",
                    "impression": "No acute disease.",
                    "indication": "Fell down stairs on the 3rd, now chest pain",
                    "comparison": "",
                    "exam_caption": "Xray Chest PA and Lateral",
                }
            )
    build_realtext.build(tmp_path / "r.csv", tmp_path / "corpus", 12, 18)
    rows = [
        json.loads(line)
        for part in ("tune.jsonl", "heldout.jsonl")
        for line in (tmp_path / "corpus" / part).read_text().splitlines()
    ]
    assert len(rows) == 12
    for r in rows:
        low = r["text"].lower()
        day = low.index("on the 3rd") + len("on the ")
        assert {"start": day, "end": day + 3, "type": "DATE"} in r["gold"]
        for ordinal in ("5th", "6th", "7th", "9th"):
            at = low.index(ordinal)
            assert {"start": at, "end": at + 3} in r["keep"], ordinal


def test_realtext_builder_leaves_out_reports_already_looked_at(tmp_path):
    write_csv(tmp_path / "r.csv", 40)
    build_realtext.build(tmp_path / "r.csv", tmp_path / "seen", 20, 18)
    seen = build_realtext.read_ids([tmp_path / "seen" / "heldout.jsonl"])
    counts = build_realtext.build(tmp_path / "r.csv", tmp_path / "fresh", 20, 1801, seen)
    fresh = build_realtext.read_ids([tmp_path / "fresh" / "heldout.jsonl"])
    assert seen and fresh and not seen & fresh and counts["tune"]["reports"] + counts["heldout"]["reports"] == 20
    # several held-out parts looked at, named after one --exclude or with the option repeated: all are left out
    args = ["build", "--csv", str(tmp_path / "r.csv"), "--n", "20", "--seed", "1802"]
    looked_at = [str(tmp_path / "seen" / "heldout.jsonl"), str(tmp_path / "fresh" / "heldout.jsonl")]
    for out, exclude in (
        ("third", ["--exclude", *looked_at]),
        ("fourth", ["--exclude", looked_at[0], "--exclude", looked_at[1]]),
    ):
        assert build_realtext.main([*args, "--out", str(tmp_path / out), *exclude]) == 0
        drawn = build_realtext.read_ids([tmp_path / out / f for f in ("tune.jsonl", "heldout.jsonl")])
        assert drawn and not drawn & (seen | fresh), out


def test_realtext_builder_refuses_the_repository_and_show_on_held_out(tmp_path, capsys):
    write_csv(tmp_path / "r.csv", 3)
    repo = build_realtext.Path(build_realtext.__file__).resolve().parents[3]
    assert (
        build_realtext.main(["build", "--csv", str(tmp_path / "r.csv"), "--out", str(repo / "privacy" / "corpus")])
        == 2
    )
    assert not (repo / "privacy" / "corpus").exists()
    (tmp_path / "heldout.jsonl").write_text(json.dumps({"id": "a", "text": "x y", "gold": [], "keep": []}) + "\n")
    assert build_realtext.main(["check", "--gold", str(tmp_path / "heldout.jsonl"), "--show", "5"]) == 2
    assert "refused on a held-out file" in capsys.readouterr().err
