"""Checkpoints: a directory with the run config, the weights (safetensors) and non-array state.

run.yaml            the whole RunConfig, so the model can be rebuilt
model.safetensors   `model.state()`
extra.json          `model.extra_state()` (vocabulary, tokenizer, ...)
train_state.json    step counter, losses, privacy ledger, what produced it
optimizers.pt       optimizer states (for resuming local training; never shipped)
format.json         the checkpoint layout version and the model family
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from cxrsynth.config import RunConfig, config_from_dict, dump_config
from cxrsynth.errors import InputError
from cxrsynth.models import build_model
from cxrsynth.models.base import GenerativeModel

WEIGHTS = "model.safetensors"
FORMAT = 1  # raise when the layout of a checkpoint directory or of a family's networks changes


def save_checkpoint(
    out: str | Path,
    model: GenerativeModel,
    cfg: RunConfig,
    train_state: Optional[dict] = None,
    save_optimizers: bool = True,
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.yaml").write_text(dump_config(cfg), encoding="utf-8")
    (out / "format.json").write_text(
        json.dumps({"checkpoint_format": FORMAT, "family": model.family}), encoding="utf-8"
    )
    state = {k: np.array(v, order="C") for k, v in model.state().items()}  # keeps 0-d buffers 0-d
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out / WEIGHTS)
    (out / "extra.json").write_text(json.dumps(model.extra_state(), sort_keys=True), encoding="utf-8")
    (out / "train_state.json").write_text(json.dumps(train_state or {}, indent=2, sort_keys=True), encoding="utf-8")
    if save_optimizers and model.opts:
        torch.save({k: o.state_dict() for k, o in model.opts.items()}, out / "optimizers.pt")
    model.save_extra_files(out)
    return out


def load_run_config(ckpt: str | Path) -> RunConfig:
    from cxrsynth.config import read_yaml

    path = Path(ckpt) / "run.yaml"
    if not path.is_file():
        raise InputError(
            f"{ckpt}: not a checkpoint directory (no run.yaml); give the directory `cxrsynth train` wrote."
        )
    return config_from_dict(read_yaml(path), str(path))


def read_json_object(path: Path, missing: Optional[dict] = None) -> dict:
    """A JSON object from a checkpoint file; `missing` when the file is absent (None: required).
    InputError naming the file when it is not UTF-8 JSON holding an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing is not None:
            return missing
        raise InputError(f"{path}: missing from the checkpoint directory.") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise InputError(
            f"{path}: cannot be read as UTF-8 text ({e.__class__.__name__}); the checkpoint is damaged."
        ) from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e}); the checkpoint is damaged or was edited.") from None
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: expected a JSON object, got {type(data).__name__}; the checkpoint is damaged or was edited."
        )
    return data


def load_checkpoint(
    ckpt: str | Path, device: Optional[torch.device] = None
) -> tuple[GenerativeModel, RunConfig, dict]:
    """Rebuild the model from run.yaml and load its state. Returns (model, config, train_state)."""
    ckpt = Path(ckpt)
    cfg = load_run_config(ckpt)
    fmt = read_json_object(ckpt / "format.json", missing={}).get("checkpoint_format", 0)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 0:
        raise InputError(
            f"{ckpt / 'format.json'}: key 'checkpoint_format' is {fmt!r}; expected a whole number (this cxrsynth writes {FORMAT})."
        )
    if fmt > FORMAT:
        raise InputError(
            f"{ckpt}: checkpoint format {fmt} was written by a newer cxrsynth (this one reads format {FORMAT} and older); upgrade cxrsynth."
        )
    model = build_model(cfg.model)
    extra_path = ckpt / "extra.json"
    if extra_path.is_file():
        try:
            model.load_extra_state(read_json_object(extra_path))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise InputError(
                f"{extra_path}: does not hold the {cfg.model.family} state cxrsynth writes ({e.__class__.__name__}: {str(e)[:200]}); the checkpoint is damaged or was edited."
            ) from None
    weights = ckpt / WEIGHTS
    if not weights.is_file():
        raise InputError(f"{ckpt}: no {WEIGHTS} in the checkpoint directory.")
    try:
        arrays = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for truncated or foreign files
        raise InputError(
            f"{weights}: not a readable safetensors file ({str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__}); the file is truncated or damaged."
        ) from None
    try:
        model.load_state(arrays)
    except (KeyError, RuntimeError, ValueError) as e:
        detail = str(e).strip().splitlines()[0][:300]
        raise InputError(
            f"{weights}: the weights do not fit the {cfg.model.family} networks that {ckpt / 'run.yaml'} describes "
            f"({detail}). The checkpoint (format {fmt or 'unversioned'}) was written by another cxrsynth version, "
            "or run.yaml was edited after training."
        ) from None
    if device is not None:
        model.to_device(device)
    train_state = read_json_object(ckpt / "train_state.json", missing={})
    return model, cfg, train_state


def load_optimizers(ckpt: str | Path, model: GenerativeModel) -> bool:
    path = Path(ckpt) / "optimizers.pt"
    if not path.is_file() or not model.opts:
        return False
    states: dict[str, Any] = torch.load(path, map_location=model.device, weights_only=True)
    for k, opt in model.opts.items():
        if k in states:
            opt.load_state_dict(states[k])
    return True


def checkpoint_hash(ckpt: str | Path) -> str:
    """SHA-256 of the weights file, short form, for provenance."""
    h = hashlib.sha256((Path(ckpt) / WEIGHTS).read_bytes()).hexdigest()
    return h[:16]
