"""What travels between the coordinator and a site, as Flower records: one codec, below both
Flower apps (client/, server/) and the federated audit (privacy/audit/protocol.py), which take it
from here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional, TypeVar, Union

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from pydantic import BaseModel

from cxrsynth.config import RunConfig, config_from_dict, dump_config

M = TypeVar("M", bound=BaseModel)


def to_arrays(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.array(v, order="C")) for k, v in state.items()})


def from_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def round_config(cfg: RunConfig, extra_state: dict) -> ConfigRecord:
    """The settings a site needs: the run config (no paths of the coordinator's are used) and the model's extra state."""
    return ConfigRecord({"run-config": dump_config(cfg), "extra-state": json.dumps(extra_state, sort_keys=True)})


def read_round_config(config: ConfigRecord) -> tuple[RunConfig, dict]:
    import yaml

    cfg = config_from_dict(yaml.safe_load(str(config["run-config"])), "run config sent by the server")
    return cfg, json.loads(str(config["extra-state"]))


def ledger_to_record(entry: dict) -> ConfigRecord:
    """A DP ledger entry as numbers (and the accountant's name): the only ConfigRecord a site sends."""
    hist = entry["history"]
    return ConfigRecord(
        {
            "noise-multiplier": float(entry["noise_multiplier"]),
            "max-grad-norm": float(entry["max_grad_norm"]),
            "sample-rate": float(entry["sample_rate"]),
            "steps": int(entry["steps"]),
            "epsilon": float(entry["epsilon"]),
            "delta": float(entry["delta"]),
            "epsilon-budget": float(entry["epsilon_budget"] or 0.0),
            "accountant": str(entry["accountant"]),
            "privacy-unit": str(entry.get("privacy_unit", "study")),
            "history-noise": [float(h[0]) for h in hist],
            "history-rate": [float(h[1]) for h in hist],
            "history-steps": [int(h[2]) for h in hist],
        }
    )


def ledger_from_record(rec: ConfigRecord) -> dict:
    hist = [list(h) for h in zip(rec["history-noise"], rec["history-rate"], rec["history-steps"])]
    return {
        "noise_multiplier": rec["noise-multiplier"],
        "max_grad_norm": rec["max-grad-norm"],
        "sample_rate": rec["sample-rate"],
        "steps": rec["steps"],
        "epsilon": rec["epsilon"],
        "delta": rec["delta"],
        "epsilon_budget": rec["epsilon-budget"] or None,
        "accountant": rec["accountant"],
        "privacy_unit": rec.get("privacy-unit", "study"),
        "history": hist,
    }


# ---- nested results as flat Flower records ----------------------------------------------------
# A Flower ConfigRecord or MetricRecord holds one level of keys whose values are scalars or lists
# of scalars. A result (a pydantic model or a nested dict) travels as one record whose keys are
# the dotted paths of its leaves, and is rebuilt from them on the other side.
SEP = "."
Leaf = Union[int, float, str, bool, bytes, list]


def flatten(value: Union[BaseModel, Mapping[str, Any]]) -> dict[str, Leaf]:
    """{"a": {"b": 1}} (or a model dumped to it) -> {"a.b": 1}. Tuples become lists; an empty
    mapping leaves no key (a model's default restores it). Keys may not contain the separator."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    flat: dict[str, Leaf] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, v in node.items():
            if not isinstance(key, str) or SEP in key or not key:
                raise ValueError(
                    f"key {prefix + str(key)!r}: a key that travels in a Flower record is a non-empty string without {SEP!r}."
                )
            path = prefix + key
            if isinstance(v, Mapping):
                walk(v, path + SEP)
            elif isinstance(v, (list, tuple)):
                if any(isinstance(x, (Mapping, list, tuple)) for x in v):
                    raise TypeError(
                        f"key {path!r}: a list in a Flower record holds scalars only, not mappings or lists."
                    )
                flat[path] = list(v)
            elif v is None:
                raise TypeError(f"key {path!r}: None cannot travel in a Flower record; leave the key out instead.")
            else:
                flat[path] = v

    walk(value, "")
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten`: {"a.b": 1} -> {"a": {"b": 1}}."""
    nested: dict[str, Any] = {}
    for path, v in flat.items():
        *parents, leaf = path.split(SEP)
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {path!r} nests under {p!r}, which is a value in the same record.")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"key {path!r} is a value and also holds the keys below it in the same record.")
        node[leaf] = list(v) if isinstance(v, list) else v
    return nested


def metric_values(flat: Mapping[str, Any]) -> dict[str, Union[int, float, list]]:
    """Flat values as a MetricRecord takes them: booleans as 0 and 1, a list mixing ints and floats
    as floats. Anything else (a string above all) raises TypeError naming the key."""
    out: dict[str, Union[int, float, list]] = {}
    for path, v in flat.items():
        if isinstance(v, (bool, np.bool_)):
            out[path] = int(v)
        elif isinstance(v, (int, float, np.integer, np.floating)):
            out[path] = v.item() if isinstance(v, np.generic) else v
        elif isinstance(v, list) and all(isinstance(x, (int, float, np.number, np.bool_)) for x in v):
            floats = any(isinstance(x, (float, np.floating)) for x in v)
            out[path] = [float(x) if floats else int(x) for x in v]
        else:
            raise TypeError(f"key {path!r} is not a number or a list of numbers; a MetricRecord carries numbers only.")
    return out


def to_metric_record(value: Union[BaseModel, Mapping[str, Any]]) -> MetricRecord:
    """A result whose leaves are numbers (booleans travel as 0 and 1) as one MetricRecord."""
    return MetricRecord(metric_values(flatten(value)))


def to_config_record(value: Union[BaseModel, Mapping[str, Any]]) -> ConfigRecord:
    return ConfigRecord(flatten(value))


def from_record(record: Union[ConfigRecord, MetricRecord, Mapping[str, Any]], model: Optional[type[M]] = None) -> Any:
    """The nested dict a record was flattened from, or, given `model`, that model validated from it
    (which also turns 0 and 1 back into booleans where the model says so)."""
    nested = unflatten(dict(record.items()))
    return nested if model is None else model.model_validate(nested)
