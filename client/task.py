"""What a hospital node does in a federated round, with no Flower types: data, model, local steps, DP.

The ClientApp (client/app.py) only moves records in and out of these functions.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from cxrsynth.config import RunConfig
from cxrsynth.data.partition import partition
from cxrsynth.data.records import PATTERN, Record, findings_key
from cxrsynth.data.text import tokenize
from cxrsynth.errors import InputError
from cxrsynth.models import rebuild_model
from cxrsynth.models.base import GenerativeModel, pick_device, unwrap
from cxrsynth.pretrained import apply_finetune, set_finetune_lr
from cxrsynth.train import apply_labeled_fraction, dp_sampling, load_run_data, seed_everything, train_steps


@dataclass
class SiteData:
    site: str
    train: list[Record]


_SITE_CACHE: dict[tuple, SiteData] = {}


def partition_of(records: list[Record], k: int, i: int, cfg: RunConfig) -> list[Record]:
    parts = partition(
        records, k, mode=cfg.federation.partition, alpha=cfg.federation.dirichlet_alpha, seed=cfg.data.split_seed
    )
    return list(parts[i])


def load_site(cfg: RunConfig, node_config: dict) -> SiteData:
    """The training records of this node.

    A hospital node names its (ingested, de-identified) dataset with the node config key
    `data-path`; a simulated node gets `partition-id` / `num-partitions` and takes its share of
    the run's dataset (phantom data when `data.path` is empty).
    """
    key = (tuple(sorted((k, str(v)) for k, v in node_config.items())), cfg.data.model_dump_json())
    if key in _SITE_CACHE:
        return _SITE_CACHE[key]
    site, records = site_records(cfg, node_config)
    train = [r for r in records if r.split != "holdout"]
    if not train:
        raise InputError(f"site {site}: no training records (after the holdout split); nothing to train on.")
    train = apply_labeled_fraction(train, cfg.data.labeled_fraction, cfg.train.seed)
    data = SiteData(site=site, train=train)
    _SITE_CACHE[key] = data
    return data


def site_records(cfg: Optional[RunConfig], node_config: dict, strict: bool = False) -> tuple[str, list[Record]]:
    """(site name, records) of this node: its dataset directory (`data-path`), split by patient
    when it has no split column, or its partition of the run's data (`partition-id`).
    `strict`: an unreadable row or image is an error, not skipped (the audit may not skip one)."""
    if "data-path" in node_config:
        from cxrsynth.data.dataset import read_dataset
        from cxrsynth.data.split import split_by_patient

        path = Path(str(node_config["data-path"]))
        records, report = read_dataset(path, strict=strict)
        if report.skipped:
            print(f"{path}: {report.skipped} row(s) skipped, {report.kept} kept")
        if cfg is not None and not any(r.split for r in records):
            records = split_by_patient(records, cfg.data.holdout_fraction, cfg.data.split_seed)
        return str(node_config.get("site") or (records[0].site if records else path.name)), records
    if "partition-id" in node_config:
        if cfg is None:
            raise InputError("a simulated site needs the run config to find its partition of the run's data.")
        k, i = int(node_config["num-partitions"]), int(node_config["partition-id"])
        return f"site{i}", partition_of(load_run_data(cfg), k, i, cfg)
    raise InputError(
        "node config has neither 'data-path' (a hospital's dataset directory) nor 'partition-id' "
        "(a simulated site); start the SuperNode with --node-config \"data-path='/data/site' site='name'\"."
    )


def token_counts(
    records: list[Record], min_patients: int, text_of: Callable[[Record], str] = lambda r: r.report
) -> tuple[dict[str, int], int]:
    """Counts of the report tokens found in the reports of at least `min_patients` patients, and the number of reports.

    The threshold is on distinct patients, not occurrences, so a token tied to one person (an
    MRN or a surname the de-identifier missed, repeated over that patient's studies) never
    leaves the site, however often it occurs; the server merges the rest into one vocabulary.
    """
    return counts_shared_by(((r.patient_id, tokenize(text_of(r))) for r in records), min_patients), len(records)


def counts_shared_by(items: Iterable[tuple[str, list[str]]], min_patients: int) -> dict[str, int]:
    """Occurrences of each key over (patient, keys) items, kept only for keys found at
    `min_patients` or more distinct patients."""
    counts: Counter = Counter()
    patients: dict[str, set] = {}
    for patient, keys in items:
        counts.update(keys)
        for k in set(keys):
            patients.setdefault(k, set()).add(patient)
    return {k: c for k, c in counts.items() if len(patients[k]) >= min_patients}


def label_counts(records: list[Record], min_patients: int) -> dict[str, int]:
    """The site's label mix as counts: labeled records ("labeled"), records per positive or
    uncertain finding ("Edema=1"), and records per whole combination of them ("pattern:" +
    `findings_key`). A finding or combination found at fewer than `min_patients` patients is left
    out (reported as absent), so a rare one never leaves the site.
    """

    def keys(labels: dict) -> list[str]:
        combo = findings_key(labels)
        return [PATTERN + combo, *filter(None, combo.split(";"))]

    labeled = [r for r in records if r.has_labels()]
    return {
        **counts_shared_by(((r.patient_id, keys(r.labels)) for r in labeled), min_patients),
        "labeled": len(labeled),
    }


def share_look(
    cfg: RunConfig, site: SiteData, center: list[float], dp_history: Optional[list]
) -> tuple[dict, Optional[list]]:
    """The site's look (cxrsynth.models.acquisition): its patients' mean grey-level quantiles about
    the coordinator's `center`, clipped, with the Gaussian mechanism when the run trains with DP.
    Returns the metrics to send (the quantiles and the number of privacy units) and, with DP, the
    site's accountant history with this release added (SiteRefused past the budget)."""
    from cxrsynth.models.acquisition import site_look

    fed = cfg.federation
    history = None
    if cfg.dp.enabled:
        from cxrsynth.privacy.dp import gaussian_release

        history = gaussian_release(dp_history or [], cfg.dp, fed.acquisition_noise, site=f"site {site.site}")
    unit = (lambda r: r.patient_id) if cfg.dp.privacy_unit == "patient" else (lambda r: r.record_id)
    quantiles, units = site_look(
        ((unit(r), r.image) for r in site.train if r.image is not None),
        center,
        fed.acquisition_clip,
        fed.acquisition_noise if cfg.dp.enabled else 0.0,
        # Noise from the operating system's entropy unless the run asks for seeded noise
        # (dp.seeded_noise): a seed the coordinator knows would let it draw the noise again.
        np.random.default_rng(cfg.train.seed if cfg.dp.seeded_noise else None),
    )
    metrics = {f"q{i:02d}": float(v) for i, v in enumerate(quantiles)}
    metrics["units"] = units
    return metrics, history


def _proximal_pull(model: GenerativeModel, anchor: dict[str, torch.Tensor], mu: float):
    """FedProx (Li et al. 2020, eq. 2): after each local step, move the weights toward the global ones.

    Taking a step of the proximal term mu/2 |w - w_global|^2 apart from the family's own loss
    keeps the loop and every family's `train_step` unchanged; with plain SGD it is exactly the
    FedProx update, with Adam it is the decoupled form (as AdamW decouples weight decay).
    """

    def pull(step: int, entry: dict) -> None:
        with torch.no_grad():
            for name, net in model.nets.items():
                lr = model.opts[name].param_groups[0]["lr"]
                for pname, p in unwrap(net).named_parameters():
                    g = anchor[f"{name}.{pname}"]
                    p.sub_(lr * mu * (p - g))

    return pull


@dataclass
class RoundResult:
    arrays: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]
    ledger: Optional[dict]


def train_round(
    cfg: RunConfig,
    site: SiteData,
    extra_state: dict,
    arrays: dict[str, np.ndarray],
    *,
    server_round: int,
    proximal_mu: float = 0.0,
    dp_history: Optional[list] = None,
) -> RoundResult:
    """One round at one site: rebuild the global model, run `federation.local_steps` steps, return the update."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed = cfg.train.seed + 1000 * server_round + int(hashlib.sha256(site.site.encode()).hexdigest()[:6], 16)
    seed_everything(seed)
    if server_round == 1 and cfg.train.init_sha256 is not None:
        # The first global model of a run that starts from a base must be that base, bit for bit.
        # The reason names only hashes of what the server sent, so it may go back to the server.
        from cxrsynth.models import model_class
        from cxrsynth.pretrained import state_sha256
        from cxrsynth.privacy.dp import SiteRefused

        got = state_sha256(arrays, extra_state, model_class(cfg.model).label_mix_keys)
        if got != cfg.train.init_sha256:
            raise SiteRefused(
                f"the round-1 weights hash to {got}, not to the base {cfg.train.init_sha256} the run pins; the site fine-tunes only that base."
            )
    model = rebuild_model(cfg, extra_state, arrays, pick_device(cfg.train.device))
    if server_round == 1 and cfg.train.init_sha256 is not None:
        model.start_fine_tuning()
    apply_finetune(model, cfg.train.finetune)
    model.opts = model.make_optimizers()
    if cfg.train.init_sha256 is not None or cfg.train.init_from is not None:
        set_finetune_lr(model, cfg.train.finetune_lr)
    steps = cfg.federation.local_steps
    sampling, ledger = "shuffle", None
    if cfg.dp.enabled:
        from cxrsynth.privacy.dp import check_budget, privatize

        sampling, rate, units = dp_sampling(site.train, cfg.train.batch_size, cfg.dp.privacy_unit)
        # A round is refused up front when its sampled batches (one accounted step each) would
        # pass the budget; the DP optimizer stops any step beyond it.
        check_budget(dp_history or [], cfg.dp, rate, steps, site=f"site {site.site}")
        ledger = privatize(model, cfg, rate, dp_history or [])
    on_step = None
    if proximal_mu > 0:
        anchor = {k: torch.as_tensor(v, device=model.device) for k, v in arrays.items()}
        on_step = _proximal_pull(model, anchor, proximal_mu)
    result = train_steps(
        model,
        site.train,
        steps=steps,
        batch_size=cfg.train.batch_size,
        seed=seed,
        sampling=sampling,
        start_step=(server_round - 1) * steps,
        log_every=cfg.train.log_every,
        on_step=on_step,
    )
    metrics = {f"loss-{k}": float(v) for k, v in result.losses.items()}
    metrics["local-seconds"] = float(result.seconds)
    if cfg.dp.enabled:
        # The coordinator checks the ledger's sample rate against it (server/screen.py).
        metrics["privacy-units"] = units
    return RoundResult(
        arrays=model.state(), num_examples=len(site.train), metrics=metrics, ledger=ledger() if ledger else None
    )
