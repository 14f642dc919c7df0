"""Nested results travel as flat Flower records and come back as they left (privacy/wire.py)."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, MetricRecord
from flwr.common.serde import (
    config_record_from_proto,
    config_record_to_proto,
    metric_record_from_proto,
    metric_record_to_proto,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cxrsynth.privacy.wire import flatten, from_record, to_config_record, to_metric_record, unflatten


def _over_the_wire(record):
    if isinstance(record, MetricRecord):
        return metric_record_from_proto(metric_record_to_proto(record))
    return config_record_from_proto(config_record_to_proto(record))


class Interval(BaseModel):
    low: float
    high: float


class Figures(BaseModel):
    passed: bool
    n: int
    auc: Interval
    replicates: list[float] = []
    per_label: dict[str, float] = {}


def test_a_typed_result_round_trips_through_a_metric_record_with_its_booleans():
    figures = Figures(
        passed=True,
        n=40,
        auc=Interval(low=0.4, high=0.61),
        replicates=[0.5, 0.52],
        per_label={"No Finding": 0.7, "Pleural Effusion": 0.8},
    )
    record = to_metric_record(figures)
    assert record["passed"] == 1 and record["auc.high"] == 0.61 and record["per_label.Pleural Effusion"] == 0.8
    assert from_record(_over_the_wire(record), Figures) == figures


def test_a_nested_dict_round_trips_through_a_config_record_with_strings_and_empty_lists():
    result = {
        "status": "ran",
        "images": {"copies": [], "encoder": "pixels", "rate": 0.0},
        "flags": [True, False],
        "sizes": [3, 4],
    }
    assert from_record(_over_the_wire(to_config_record(result))) == result


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.one_of(
            st.integers(-(2**40), 2**40),
            st.floats(allow_nan=False, allow_infinity=False),
            st.lists(st.integers(0, 1000), max_size=4),
        ),
        lambda inner: st.dictionaries(st.text("abcdef_ -", min_size=1, max_size=6), inner, min_size=1, max_size=4),
        max_leaves=12,
    ).filter(lambda x: isinstance(x, dict))
)
def test_any_nested_mapping_of_numbers_round_trips(result):
    assert unflatten(flatten(result)) == result
    assert from_record(_over_the_wire(to_metric_record(result))) == result


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"site": "hospital-a"}, r"'site' is not a number"),
        ({"a.b": 1}, r"key 'a.b'.*without '\.'"),
        ({"a": None}, r"key 'a': None"),
        ({"a": [{"b": 1}]}, r"key 'a': a list .* scalars only"),
    ],
)
def test_what_a_metric_record_cannot_carry_is_refused_naming_the_key(bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        to_metric_record(bad)


def test_a_record_whose_keys_clash_is_refused():
    with pytest.raises(ValueError, match="a.b"):
        from_record(ConfigRecord({"a": 1, "a.b": 2}))
    with pytest.raises(ValueError, match="'a'"):
        from_record(ConfigRecord({"a.b": 2, "a": 1}))
