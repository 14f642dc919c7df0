"""Checkpoint after every round, and what `--resume` reads back.

    <out>/rounds/round-NNN/   a complete `cxrsynth` checkpoint of the global model after round NNN,
                              plus fl_state.json (round, history, ledgers, rejections) and the
                              strategy's state (strategy.safetensors); written under a temporary
                              name and renamed, so a directory that exists is complete.
    <out>/                    the latest round's checkpoint again, ready for `cxrsynth generate`.

Resume takes the highest complete round directory: nothing is redone and nothing is lost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
from safetensors.numpy import load_file, save_file

from cxrsynth.checkpoint import save_checkpoint
from cxrsynth.config import RunConfig
from cxrsynth.models.base import GenerativeModel

FL_STATE = "fl_state.json"
STRATEGY = "strategy.safetensors"
KEEP_ROUNDS = 2


def round_dir(out: Path, rnd: int) -> Path:
    return out / "rounds" / f"round-{rnd:03d}"


def save_round(
    out: Path, rnd: int, model: GenerativeModel, cfg: RunConfig, fl_state: dict, strategy_arrays: dict[str, np.ndarray]
) -> Path:
    final = round_dir(out, rnd)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    train_state = {
        "step": rnd * cfg.federation.local_steps,
        "round": rnd,
        "history": fl_state["history"],
        "privacy_ledger": fl_state.get("privacy_ledger"),
        "federated": True,
    }
    if "site_looks" in fl_state:
        # The sites' looks generation renders its samples in (cxrsynth.models.acquisition).
        train_state["site_looks"] = fl_state["site_looks"]
    if "base" in fl_state:
        # What the run started from, and that it cost no site's privacy (cxrsynth.pretrained).
        train_state["base"] = fl_state["base"]
        if train_state["privacy_ledger"]:
            train_state["privacy_ledger"] = {**train_state["privacy_ledger"], "base": fl_state["base"]}
    save_checkpoint(tmp, model, cfg, train_state, save_optimizers=False)
    (tmp / FL_STATE).write_text(json.dumps(fl_state, indent=2, sort_keys=True), encoding="utf-8")
    if strategy_arrays:
        save_file({k: np.array(v, order="C") for k, v in strategy_arrays.items()}, str(tmp / STRATEGY))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for f in final.iterdir():
        if f.is_dir():
            shutil.copytree(f, out / f.name, dirs_exist_ok=True)
        elif f.name != STRATEGY:
            shutil.copy2(f, out / (f.name + ".tmp"))
            (out / (f.name + ".tmp")).replace(out / f.name)
    for old in sorted((out / "rounds").glob("round-[0-9][0-9][0-9]"))[:-KEEP_ROUNDS]:
        shutil.rmtree(old)
    return final


def last_round(out: Path) -> Optional[Path]:
    done = sorted(p for p in (out / "rounds").glob("round-[0-9][0-9][0-9]") if (p / FL_STATE).is_file())
    return done[-1] if done else None


def load_round(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    fl_state = json.loads((path / FL_STATE).read_text(encoding="utf-8"))
    strat = load_file(str(path / STRATEGY)) if (path / STRATEGY).is_file() else {}
    return fl_state, strat
