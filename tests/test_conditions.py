"""One condition type for every family (cxrsynth/models/condition.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrsynth.data.records import LABELS
from cxrsynth.errors import InputError
from cxrsynth.models.condition import Condition, as_conditions


def test_a_prompt_or_a_label_dict_is_taken_as_a_condition():
    assert Condition.of("  The heart is enlarged. ") == Condition(prompt="The heart is enlarged.")
    labelled = Condition.of({"Cardiomegaly": "1", "Edema": ""})
    assert (
        set(labelled.labels) == set(LABELS)
        and labelled.labels["Cardiomegaly"] == 1
        and labelled.labels["Edema"] is None
    )
    image = np.zeros((8, 8), np.uint8)
    both = Condition(labels={"Pleural Effusion": -1}, prompt="effusion", frontal=image)
    assert Condition.of(both) is both and both.given() == ["labels", "prompt", "frontal"]


def test_conditions_are_one_per_record_and_refused_naming_what_is_wrong():
    assert as_conditions(None, 3) is None
    assert [c.prompt for c in as_conditions(["a", "b"], 2)] == ["a", "b"]
    with pytest.raises(InputError, match="1 condition.* for 2 record"):
        as_conditions(["a"], 2)
    with pytest.raises(InputError, match="one condition per record"):
        as_conditions("a", 1)
    with pytest.raises(InputError, match="condition 1: unknown label 'Cardio'"):
        as_conditions(["a", {"Cardio": 1}], 2)
    with pytest.raises(InputError, match="label 'Edema' has value 2"):
        Condition(labels={"Edema": 2})
    with pytest.raises(InputError, match="expected a Condition, a prompt string or a label dict"):
        as_conditions([3], 1)
