"""The rule-based report labeler: mentions, negation, uncertainty, aggregation, No Finding."""

import pytest

from cxrsynth.data.labeler import label_report
from cxrsynth.data.records import LABELS


def pos(text):
    return {k: v for k, v in label_report(text).items() if v is not None}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("There is a large right pleural effusion.", {"Pleural Effusion": 1}),
        ("No pneumothorax.", {"Pneumothorax": 0, "No Finding": 1}),
        ("Without evidence of pneumothorax.", {"Pneumothorax": 0, "No Finding": 1}),
        ("Pneumothorax is not seen.", {"Pneumothorax": 0, "No Finding": 1}),
        ("The left pneumothorax has resolved.", {"Pneumothorax": 0, "No Finding": 1}),
        ("Possible small left pleural effusion.", {"Pleural Effusion": -1}),
        ("Opacity may represent atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
        ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
        ("Cannot exclude early pneumonia.", {"Pneumonia": -1}),
        ("Atelectasis versus consolidation at the right base.", {"Atelectasis": -1, "Consolidation": -1}),
        ("No change in the moderate right pleural effusion.", {"Pleural Effusion": 1}),
        ("There is no pneumothorax but there is a small effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
        ("The heart is moderately enlarged.", {"Cardiomegaly": 1}),
        ("Heart size is normal.", {"Cardiomegaly": 0, "No Finding": 1}),
        ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": 1}),
        ("Healed left rib fracture.", {"Fracture": 1}),
        ("A 2 cm nodule in the right upper lobe.", {"Lung Lesion": 1}),
        ("Mild pulmonary edema.", {"Edema": 1}),
        ("Apical pleural thickening.", {"Pleural Other": 1}),
        ("Endotracheal tube tip 4 cm above the carina.", {"Support Devices": 1}),
        ("Right lower lobe consolidation, concerning for pneumonia.", {"Consolidation": 1, "Pneumonia": -1}),
        ("No acute cardiopulmonary process.", {"No Finding": 1}),
        ("Right IJ catheter tip in the mid SVC.", {"Support Devices": 1}),
        ("Nasogastric tube has been removed.", {"Support Devices": 0, "No Finding": 1}),
        ("The mediastinal and hilar contours are normal.", {"Enlarged Cardiomediastinum": 0, "No Finding": 1}),
        ("Interval resolution of the left lower lobe pneumonia.", {"Pneumonia": 0, "No Finding": 1}),
        ("Small left apical pneumothorax is unchanged.", {"Pneumothorax": 1}),
        ("Likely small bilateral effusions.", {"Pleural Effusion": -1}),
        ("", {}),
        ("Dr. Ann Lee was paged at (617) 555-0134 on 03/04/2021 at 10:15.", {}),
    ],
)
def test_single_phrases(text, expected):
    assert pos(text) == expected


def test_negation_reaches_every_item_of_a_list():
    out = label_report("No pneumothorax, pleural effusion, or focal consolidation.")
    assert (out["Pneumothorax"], out["Pleural Effusion"], out["Consolidation"]) == (0, 0, 0)


def test_nearest_cue_wins_between_negation_and_uncertainty():
    out = label_report("Possible small effusion, no pneumothorax.")
    assert out["Pleural Effusion"] == -1 and out["Pneumothorax"] == 0


def test_aggregation_positive_beats_uncertain_beats_negative():
    assert label_report("No effusion on the left. Small right effusion.")["Pleural Effusion"] == 1
    assert label_report("No effusion on the left. Possible right effusion.")["Pleural Effusion"] == -1


def test_no_finding_is_blank_when_a_finding_is_present_but_not_for_devices_alone():
    assert label_report("Cardiomegaly. Lungs are clear.")["No Finding"] is None
    assert label_report("Possible pneumonia. No effusion.")["No Finding"] is None
    out = label_report("Right PICC line in the SVC. Lungs are clear. No pneumothorax.")
    assert out["Support Devices"] == 1 and out["No Finding"] == 1


def test_every_label_key_is_returned():
    assert set(label_report("Normal chest.")) == set(LABELS)
