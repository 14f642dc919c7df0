"""What travels between the coordinator and a site, as Flower records: one codec, below both
Flower apps (client/, server/) and the federated audit (privacy/audit/protocol.py), which take it
from here."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from cxrsynth.config import RunConfig, config_from_dict, dump_config


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
