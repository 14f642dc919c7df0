"""Label vocabularies at ingest: NIH ChestX-ray14's 15 names onto the 14 CheXpert labels, and
site manifests of images and labels with no report at all."""

import json

import numpy as np
import pytest
from PIL import Image

from cxrsynth.cli import main
from cxrsynth.data.dataset import read_dataset
from cxrsynth.data.label_maps import NIH, NIH_TO_CHEXPERT
from cxrsynth.data.manifest import read_manifest
from cxrsynth.data.records import LABELS
from cxrsynth.errors import InputError

KEY = b"k" * 32
NIH_NAMES = list(NIH_TO_CHEXPERT)


def test_every_nih_finding_is_mapped_or_named_as_dropped_and_every_target_is_a_label():
    assert len(NIH_NAMES) == 15
    assert sorted(NIH.dropped) == ["Emphysema", "Fibrosis", "Hernia"]
    assert all(t in LABELS for t in NIH_TO_CHEXPERT.values() if t is not None)
    assert NIH.not_stated == ["Enlarged Cardiomediastinum", "Fracture", "Support Devices"]


def test_nih_values_convert_with_positive_winning_where_two_findings_meet():
    values = {n: 0 for n in NIH_NAMES}
    out = NIH.convert(
        {**values, "Effusion": 1, "Mass": 0, "Nodule": 1, "Infiltration": 1, "Pleural_Thickening": 1, "Emphysema": 1}
    )
    assert (
        out["Pleural Effusion"] == 1
        and out["Lung Lesion"] == 1
        and out["Lung Opacity"] == 1
        and out["Pleural Other"] == 1
    )
    assert out["Cardiomegaly"] == 0 and out["No Finding"] == 0
    assert out["Fracture"] is None and out["Support Devices"] is None  # no NIH source: not stated
    assert NIH.convert({**values, "Nodule": -1, "Mass": 0})["Lung Lesion"] == -1
    assert NIH.convert({"Nodule": None, "Mass": None})["Lung Lesion"] is None


def test_a_findings_list_reads_listed_findings_as_positive_and_the_rest_as_negative():
    v = NIH.from_list("Effusion|pleural thickening")
    assert v["Effusion"] == 1 and v["Pleural_Thickening"] == 1 and v["Hernia"] == 0
    assert NIH.from_list("")["Effusion"] is None
    with pytest.raises(ValueError, match="'Efusion' is not one of the nih labels"):
        NIH.from_list("Efusion")


def _images(tmp_path, n):
    (tmp_path / "png").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(((np.arange(24 * 24) * (i + 1)) % 251).reshape(24, 24).astype(np.uint8)).save(
            tmp_path / "png" / f"{i}.png"
        )


def test_nih_columns_and_extra_columns_ingest_into_a_report_free_dataset(tmp_path):
    _images(tmp_path, 3)
    header = "Image Index,Patient ID,Patient Age," + ",".join(NIH_NAMES)
    rows = []
    for i, positives in enumerate([("Effusion", "Nodule"), ("No Finding",), ("Hernia", "Infiltration")]):
        rows.append(f"png/{i}.png,P{i},55," + ",".join("1" if n in positives else "0" for n in NIH_NAMES))
    (tmp_path / "nih.csv").write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    csv = tmp_path / "nih.csv"
    ingest = ["--quiet", "data", "ingest", "--source", "manifest", "--path", str(csv), "--out", str(tmp_path / "out")]
    with pytest.raises(
        InputError, match=r"unknown column\(s\) \['Image Index', 'Patient Age', .*'Effusion'.*--labels"
    ):
        read_manifest(csv, key=KEY)
    assert main(ingest) == 2  # CheXpert names expected by default, and Patient Age is not read
    assert (
        main(ingest + ["--labels", "nih", "--ignore-columns", "Patient Age"]) == 2
    )  # Image Index is not an image column
    csv.write_text(csv.read_text().replace("Image Index", "image_path"), encoding="utf-8")
    assert main(ingest + ["--labels", "nih", "--ignore-columns", "Patient Age"]) == 0
    recs, _ = read_dataset(tmp_path / "out")
    by_lesion = {r.labels["Lung Lesion"]: r for r in recs}
    a = by_lesion[1]
    assert a.labels["Pleural Effusion"] == 1 and a.labels["No Finding"] == 0 and a.labels["Fracture"] is None
    assert not any(r.findings or r.impression for r in recs)
    c = next(r for r in recs if r.labels["Lung Opacity"] == 1)
    assert c.labels["No Finding"] == 0  # its Hernia is dropped, not read as "no finding"
    rep = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert rep["labels"]["vocabulary"] == "nih" and rep["labels"]["dropped_positives"] == {
        "Emphysema": 0,
        "Fibrosis": 0,
        "Hernia": 1,
    }
    assert rep["with_report_text"] == 0 and rep["with_labels"] == 3


def test_a_findings_list_column_bad_findings_and_a_manifest_with_neither_labels_nor_reports(tmp_path):
    _images(tmp_path, 2)
    (tmp_path / "list.csv").write_text(
        "image_path,patient_id,Finding Labels\npng/0.png,P0,Cardiomegaly|Mass\npng/1.png,P1,Cardiomegaly|Lump\n",
        encoding="utf-8",
    )
    recs, report = read_manifest(tmp_path / "list.csv", key=KEY, labels="nih")
    assert (
        len(recs) == 1
        and recs[0].labels["Cardiomegaly"] == 1
        and recs[0].labels["Lung Lesion"] == 1
        and recs[0].labels["Edema"] == 0
    )
    assert report.problems[0].row == 2 and "'Lump' is not one of the nih labels" in report.problems[0].reason
    (tmp_path / "bare.csv").write_text("image_path,patient_id,Sex\npng/0.png,P0,F\n", encoding="utf-8")
    with pytest.raises(InputError, match="bare.csv: no label columns and no report column"):
        read_manifest(tmp_path / "bare.csv", key=KEY, ignore=["sex"])
    with pytest.raises(InputError, match=r"--ignore-columns names \['Age'\]"):
        read_manifest(tmp_path / "bare.csv", key=KEY, ignore=["Age"])
    assert (
        main(
            [
                "--quiet",
                "data",
                "ingest",
                "--source",
                "dicom",
                "--path",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--labels",
                "nih",
            ]
        )
        == 2
    )
