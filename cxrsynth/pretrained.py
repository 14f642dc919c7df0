"""Base models pretrained on public data, and fine-tuning that starts from them.

DP-SGD on a few hundred studies per site cannot teach a generator from scratch what a chest X-ray
looks like; what makes DP synthetic data useful is a model pretrained without privacy cost on data
that is no site's, then fine-tuned privately (Ghalebikesabi et al. 2023; DP-LDM, Lyu et al. 2023;
DP-SynGen 2024 pretrains on programmatically drawn images, as our phantom cohorts are). This
module is that stage, written once for every family:

- `pretrain(cfg, records, out, source)`: no DP, no federation, on records that are no site's; the
  checkpoint carries `base.json` (what it was trained on, its SHA-256, "privacy cost: none").
- `base_sha256`: SHA-256 over the weights and the non-array state (vocabulary, tokenizer), in a
  canonical order, so the coordinator, every site and the dataset card compute the same value from
  a checkpoint directory or from the arrays a round ships.
- `load_base(cfg)`: the model a run starts from when `train.init_from` is set, refused when its
  hash differs from `train.init_sha256`.
- `apply_finetune(model, patterns)`: which parameters fine-tuning updates (`train.finetune`);
  the rest are frozen, so DP-SGD clips and noises fewer dimensions.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from cxrsynth.config import RunConfig
from cxrsynth.data.records import Record
from cxrsynth.errors import CheckFailed, InputError
from cxrsynth.models.base import GenerativeModel, unwrap

CARD = "base.json"
NO_PRIVACY_COST = "none: trained on data that is no site's, without DP and without federation"


class BaseCard(BaseModel):
    """What a base checkpoint is; written beside its weights and copied into ledgers and cards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    family: str
    pretrained_on: str
    records: int
    patients: int
    steps: int
    seconds: float
    privacy_cost: str = NO_PRIVACY_COST


def state_sha256(state: dict[str, np.ndarray], extra: dict, skip: Sequence[str] = ()) -> str:
    """SHA-256 of a model's arrays (name, dtype, shape, bytes, in name order) and its extra state
    without the keys in `skip` (the family's `label_mix_keys`: the federation refits the label mix
    from the sites' counts, so it is not part of the base)."""
    extra = {k: v for k, v in extra.items() if k not in skip}
    h = hashlib.sha256()
    for name in sorted(state):
        arr = np.ascontiguousarray(state[name])
        h.update(name.encode("utf-8") + b"\0" + str(arr.dtype).encode() + b"\0" + str(arr.shape).encode() + b"\0")
        h.update(arr.tobytes())
    h.update(json.dumps(extra, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


def model_sha256(model: GenerativeModel) -> str:
    return state_sha256(model.state(), model.extra_state(), type(model).label_mix_keys)


def read_card(ckpt: str | Path) -> BaseCard:
    path = Path(ckpt) / CARD
    if not path.is_file():
        raise InputError(
            f"{ckpt}: not a base checkpoint (no {CARD}); make one with `cxrsynth pretrain`, which records "
            "what the base was trained on, so a site can see that it cost no site's privacy."
        )
    try:
        return BaseCard.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid base card ({str(e).splitlines()[0]}).") from None


def base_sha256(ckpt: str | Path) -> str:
    """The hash of a base checkpoint directory, recomputed from its files (never read from base.json)."""
    from cxrsynth.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(ckpt)
    return model_sha256(model)


def pinned(cfg: RunConfig) -> RunConfig:
    """`cfg` with `train.init_sha256` set to the base's recomputed hash; refused if a pin differs."""
    if cfg.train.init_from is None:
        return cfg
    digest = base_sha256(cfg.train.init_from)
    check_pin(digest, cfg.train.init_sha256, where=f"train.init_from {cfg.train.init_from}")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"init_sha256": digest})})


def check_pin(digest: str, expected: Optional[str], where: str) -> None:
    if expected is not None and digest != expected:
        raise CheckFailed(
            f"{where}: the base model's SHA-256 is {digest}, but the run pins {expected}. A site fine-tunes only "
            "the base it was told about; get the published base checkpoint, or correct train.init_sha256."
        )


def load_base(cfg: RunConfig, device=None) -> tuple[GenerativeModel, BaseCard]:
    """The run's model with the weights and state of `train.init_from`, after checking its hash
    against the base's card and against `train.init_sha256`.

    The networks are built from the run's model section, so fine-tuning may change what does not
    shape them (learning rates, sampling settings); a section that changes a shape is refused,
    naming the weight that does not fit.
    """
    from cxrsynth.checkpoint import load_checkpoint
    from cxrsynth.models import build_model

    base_dir = cfg.train.init_from
    if base_dir is None:
        raise InputError("load_base needs train.init_from (a base checkpoint directory).")
    card = read_card(base_dir)
    base, base_cfg, _ = load_checkpoint(base_dir)
    if base_cfg.model.family != cfg.model.family:
        raise InputError(
            f"train.init_from {base_dir}: the base is a {base_cfg.model.family} model, but the run's model.family is "
            f"{cfg.model.family}; fine-tune a base of the same family."
        )
    digest = model_sha256(base)
    if digest != card.sha256:
        raise CheckFailed(
            f"{base_dir}: its weights hash to {digest}, not to the {card.sha256} its {CARD} records; the files were changed after pretraining."
        )
    check_pin(digest, cfg.train.init_sha256, where=f"train.init_from {base_dir}")
    model = build_model(cfg.model)
    model.load_extra_state(base.extra_state())
    try:
        model.load_state(base.state())
    except (KeyError, RuntimeError, ValueError) as e:
        changed = sorted(k for k, v in cfg.model.model_dump().items() if base_cfg.model.model_dump().get(k) != v)
        raise InputError(
            f"train.init_from {base_dir}: the base's weights do not fit the networks of the run's model section "
            f"({str(e).strip().splitlines()[0][:200]}); it differs from the base in: {', '.join(changed) or 'nothing'}. "
            "Keep the base's network sizes (start the run from the base's preset)."
        ) from None
    if device is not None:
        model.to_device(device)
    return model, card


def apply_finetune(model: GenerativeModel, patterns: Sequence[str]) -> tuple[int, int]:
    """Freeze every parameter whose name (`<net>.<parameter>`) matches none of `patterns`.

    Returns (trainable, total) parameter counts. Refuses patterns that leave nothing to train.
    """
    trainable = total = 0
    froze = False
    for net_name, net in model.nets.items():
        for pname, p in unwrap(net).named_parameters():
            # Only ever freezes: what a family keeps frozen itself (a moving average, a frozen VAE) stays so.
            keep = p.requires_grad and any(fnmatch.fnmatchcase(f"{net_name}.{pname}", pat) for pat in patterns)
            froze |= p.requires_grad and not keep
            p.requires_grad_(keep)
            total += p.numel()
            trainable += p.numel() if keep else 0
    if trainable == 0:
        raise InputError(
            f"train.finetune {list(patterns)}: no parameter of the {model.family} model matches; parameter names are "
            f"'<network>.<parameter>' with networks {', '.join(model.nets)} (e.g. '{next(iter(model.nets))}.*')."
        )
    if froze:
        for net in model.nets.values():
            for m in unwrap(net).modules():
                if isinstance(m, torch.nn.GroupNorm) and not getattr(m, "_plain_input_hook", False):
                    m.register_forward_pre_hook(_plain_input_without_grad)
                    m._plain_input_hook = True
    return trainable, total


def _plain_input_without_grad(module, args):
    """torch's CPU GroupNorm backward crashes (SIGSEGV, torch 2.13) on a channels-last input
    that needs no gradient when the layer's weight does: the first trained norm after frozen
    layers, which a partial `train.finetune` makes (CPU convolutions hand some layers
    channels-last tensors). Such an input is given to the norm in the default layout; any other
    call (no gradient wanted, or one through the input) is left as it is."""
    x = args[0] if args else None
    if (
        isinstance(x, torch.Tensor)
        and torch.is_grad_enabled()
        and not x.requires_grad
        and not x.is_contiguous()
        and any(p.requires_grad for p in module.parameters(recurse=False))
    ):
        return (x.contiguous(), *args[1:])
    return None


def set_finetune_lr(model: GenerativeModel, lr: Optional[float]) -> None:
    """Every optimizer of `model` at `lr` (none: leave the model's own). A converged base takes
    small steps: a fresh Adam moves every weight by about the learning rate from its first step,
    whatever the gradient's size, so a from-scratch rate shakes what pretraining learnt."""
    if lr is None:
        return
    for opt in model.opts.values():
        for group in opt.param_groups:
            group["lr"] = lr


# The hospitals of the demo and of phantom runs are site0..site2; a public cohort draws the
# acquisition styles and label mixes of sites past them, as public data differs from a hospital's.
PUBLIC_SITE_OFFSET = 8
# A public collection comes from one or a few hospitals (NIH ChestX-ray14 and CheXpert from one
# each), so its look is not a given hospital's. Measured on the demo's hospitals (600-step
# classifiers, site holdout): real phantom images of 2 public styles carry 0.77 macro AUROC where
# the hospitals' own images carry 0.875; of 8 public styles, 0.872. What the sites' data then adds
# is their look, which DP-SGD on a hundred patients a site cannot carry into the weights but a few
# DP statistics can (federation.acquisition, cxrsynth.models.acquisition): on the 2-style base
# the sites' looks take the release from 0.726 to 0.819 (README, "Useful synthetic data").
PUBLIC_STYLES = 2
# Public collections are labelled in their own vocabulary, often without every label a hospital
# states: NIH ChestX-ray14, the most used one, has no source for Enlarged Cardiomediastinum,
# Fracture or Support Devices. `vocabulary="nih"` publishes the cohort as `data ingest --labels
# nih` would read it: those labels not stated, although its images show the findings. Measured
# (README, "Useful synthetic data"): a base pretrained so cannot draw them on request, and
# fine-tuning at the sites did not teach it to (40 DP steps, or 300 steps without DP), so the
# default public cohort states all 14 labels.
PUBLIC_VOCABULARY: Optional[str] = None


def public_phantom(
    cfg: RunConfig, n: int, seed: int, sites: int = PUBLIC_STYLES, vocabulary: Optional[str] = PUBLIC_VOCABULARY
) -> tuple[list[Record], str]:
    """A phantom cohort that is no hospital's, and the sentence that says so on the base's card.

    `vocabulary`: the label vocabulary the cohort is published in (`cxrsynth.data.label_maps`);
    the labels it has no source for are left not stated. None: all 14 labels stated."""
    from cxrsynth.data.label_maps import vocabulary as label_vocabulary
    from cxrsynth.data.phantom import make_phantom

    p = cfg.data.phantom
    # Published de-identified, as public collections are: a base that learnt names and dates from
    # its reports would write them into every release made from it.
    records = make_phantom(
        n=n,
        sites=sites,
        seed=seed,
        image_size=p.image_size,
        lateral=p.lateral,
        site_offset=PUBLIC_SITE_OFFSET,
        deidentified=True,
    )
    # Its own id space: a public patient is never mistaken for a hospital's patient of the same number.
    records = [
        r.with_(record_id=f"pub-{r.record_id}", patient_id=f"pub-{r.patient_id}", study_id=f"pub-{r.study_id}")
        for r in records
    ]
    labelled = "all 14 labels"
    if vocabulary is not None:
        unstated = label_vocabulary(vocabulary).not_stated
        records = [r.with_(labels={k: (None if k in unstated else v) for k, v in r.labels.items()}) for r in records]
        labelled = f"labels in the {vocabulary} vocabulary (not stated: {', '.join(unstated) or 'none'})"
    last = PUBLIC_SITE_OFFSET + sites - 1
    return (
        records,
        f"phantom cohort: {n} studies, acquisition styles of sites {PUBLIC_SITE_OFFSET}..{last}, {labelled}, seed {seed}, reports de-identified (no hospital's data)",
    )


def pretrain(
    cfg: RunConfig, records: Sequence[Record], out: str | Path, pretrained_on: str, progress=None
) -> BaseCard:
    """Train a base model on public `records` (no DP, no federation) and write it with its card."""
    from cxrsynth.checkpoint import save_checkpoint
    from cxrsynth.models import build_model
    from cxrsynth.models.base import pick_device
    from cxrsynth.progress import Progress
    from cxrsynth.train import seed_everything, train_steps

    if cfg.dp.enabled:
        raise InputError(
            "pretraining runs without DP on public data; set dp.enabled: false (DP belongs to the sites' fine-tuning)."
        )
    if not records:
        raise InputError("pretraining needs records; the public dataset is empty.")
    progress = progress or Progress()
    out = Path(out)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model)
    model.setup(list(records))
    model.to_device(pick_device(cfg.train.device))
    model.opts = model.make_optimizers()
    t0 = time.perf_counter()
    result = train_steps(
        model,
        list(records),
        steps=cfg.train.steps,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        log_every=cfg.train.log_every,
        progress=progress,
        label=f"pretrain {cfg.model.family}",
    )
    model.to_device(pick_device("cpu"))
    card = BaseCard(
        sha256=model_sha256(model),
        family=cfg.model.family,
        pretrained_on=pretrained_on,
        records=len(records),
        patients=len({r.patient_id for r in records}),
        steps=result.step,
        seconds=round(time.perf_counter() - t0, 1),
    )
    save_checkpoint(
        out,
        model,
        cfg,
        {"step": result.step, "history": result.history[-2000:], "base": card.model_dump()},
        save_optimizers=False,
    )
    (out / CARD).write_text(card.model_dump_json(indent=2), encoding="utf-8")
    progress.say(f"base model: {out} (sha256 {card.sha256}); pin it with train.init_sha256")
    return card
