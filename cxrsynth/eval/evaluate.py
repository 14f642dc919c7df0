"""One evaluation run: real + synthetic dataset directories -> metrics.json and index.html."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cxrsynth.data.records import LABELS, Record
from cxrsynth.data.split import split_by_patient
from cxrsynth.data.stream import ImageColumn, ManifestDataset, RecordView, concat_view, metadata_view, subset_view
from cxrsynth.errors import InputError
from cxrsynth.eval.bootstrap import format_interval
from cxrsynth.eval.config import EvalConfig
from cxrsynth.eval.diversity import within_condition_ms_ssim
from cxrsynth.eval.fidelity import classifier_extractor, file_extractor, frechet_distance
from cxrsynth.eval.labels import label_agreement
from cxrsynth.eval.results import as_metrics
from cxrsynth.eval.stages import run_stage
from cxrsynth.eval.text_metrics import report_metrics
from cxrsynth.eval.utility import utility
from cxrsynth.pages import fmt
from cxrsynth.progress import Progress

log = logging.getLogger(__name__)
NO_REPORTS = "no reports"


def _open(root: str | Path) -> RecordView:
    """A dataset directory as lazy records: rows read now, each image when a measurement reads it.
    A row whose image file is missing is skipped with a warning; a corrupt image stops the
    measurement that decodes it, naming the row."""
    dataset, report = ManifestDataset.open(root)
    if report.skipped:
        log.warning("%s: %d row(s) skipped, e.g. %s", root, report.skipped, report.problems[0])
    return RecordView(dataset)


def load_real(real_dir: str | Path, cfg: EvalConfig) -> tuple[Sequence[Record], Sequence[Record]]:
    """(train, holdout) of a real dataset; split by patient when the manifest has no split."""
    records = _open(real_dir)
    if not len(records):
        raise InputError(f"{real_dir}: the real dataset has no readable records.")
    dataset = records.dataset
    splits = dataset.splits()
    if not any(splits):
        splits = [split_by_patient([r], cfg.holdout_fraction, cfg.seed)[0].split for r in metadata_view(records)]
        dataset.with_splits(splits)
    train = subset_view(records, [i for i, side in enumerate(splits) if side != "holdout"])
    holdout = subset_view(records, [i for i, side in enumerate(splits) if side == "holdout"])
    if not len(holdout) or not len(train):
        raise InputError(
            f"{real_dir}: needs both training and holdout records (split column); got {len(train)} train and {len(holdout)} holdout."
        )
    return train, holdout


def load_synthetic(synthetic_dir: str | Path) -> Sequence[Record]:
    records = _open(synthetic_dir)
    if len(records) < 2:
        raise InputError(f"{synthetic_dir}: needs at least 2 synthetic records, found {len(records)}.")
    return records


def _provenance(rec: Record, key: str) -> Optional[str]:
    return next((p.split("=", 1)[1] for p in rec.provenance.split(";") if p.startswith(key + "=")), None)


def _positives(rec: Record) -> tuple[str, ...]:
    return tuple(k for k in LABELS if rec.labels.get(k) == 1)


def reference_pairs(
    synthetic: Sequence[Record], real: Sequence[Record], max_refs: int
) -> tuple[str, list[str], list[list[str]]]:
    """Candidate reports and their references.

    'paired': a synthetic row whose provenance says `reference=<real record_id>` (a report generated
    from that real image) is scored against that record's report. Otherwise 'label-matched': up to
    `max_refs` real reports with the same positive findings serve as references.
    """
    synthetic, real = metadata_view(synthetic), metadata_view(real)
    by_id = {r.record_id: r.report for r in real}
    cands, refs = [], []
    for s in synthetic:
        ref_id = _provenance(s, "reference")
        if ref_id in by_id and by_id[ref_id].strip() and s.report.strip():
            cands.append(s.report)
            refs.append([by_id[ref_id]])
    del by_id
    if cands:
        return "paired", cands, refs
    by_labels: dict[tuple, list[str]] = {}
    for r in real:
        if r.report.strip():
            by_labels.setdefault(_positives(r), []).append(r.report)
    for s in synthetic:
        matched = by_labels.get(_positives(s), [])
        if s.report.strip() and matched:
            cands.append(s.report)
            refs.append(matched[:max_refs])
    return "label-matched", cands, refs


def family_probe(checkpoint: str | Path, train: Sequence[Record], holdout: Sequence[Record]) -> dict:
    """The latent-space measurement the checkpoint's family declares (`registry.Probe`), if any."""
    from cxrsynth.checkpoint import load_checkpoint, load_run_config
    from cxrsynth.models import registry

    family = registry.for_config(load_run_config(checkpoint).model)
    if family.probe is None:
        return {"family": family.name, "skipped": f"the {family.name} family declares no probe of its latent space"}
    model, _, _ = load_checkpoint(checkpoint)
    model.eval()
    return {
        "family": family.name,
        "title": family.probe.title,
        "note": family.probe.note,
        "table": family.probe.run(model, train, holdout),
    }


def run_evaluation(
    synthetic_dir: str | Path,
    real_dir: str | Path,
    out_dir: str | Path,
    cfg: EvalConfig = EvalConfig(),
    extractor: str = "classifier",
    checkpoint: Optional[str | Path] = None,
    progress: Optional[Progress] = None,
    baseline_dir: Optional[str | Path] = None,
) -> dict:
    """`baseline_dir`: synthetic data of the base model before fine-tuning, scored beside the
    release (utility arm and FID), so the page shows what the sites' fine-tuning added."""
    progress = progress or Progress()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, holdout = load_real(real_dir, cfg)
    synthetic = load_synthetic(synthetic_dir)
    baseline = load_synthetic(baseline_dir) if baseline_dir is not None else None
    families = sorted({_provenance(s, "family") or "unknown" for s in metadata_view(synthetic)})
    metrics: dict = {
        "synthetic": {"dir": str(synthetic_dir), "records": len(synthetic), "families": families},
        **({"baseline": {"dir": str(baseline_dir), "records": len(baseline)}} if baseline is not None else {}),
        "real": {"dir": str(real_dir), "train_records": len(train), "holdout_records": len(holdout)},
        "settings": cfg.model_dump(),
        "status": {},
    }
    say = progress.say

    def record(name: str, result) -> None:
        metrics["status"][name] = {
            "status": result.status,
            "detail": result.detail,
            "seconds": round(result.seconds, 2),
        }
        if result.ok:
            metrics[name] = result.value

    util = run_stage("utility", lambda: utility(train, synthetic, holdout, cfg, progress, baseline=baseline), say)
    real_classifier = util.value[1] if util.ok else None
    if util.ok:
        util.value = util.value[0]
    record("utility", util)

    def fidelity() -> dict:
        if extractor == "classifier":
            if real_classifier is None:
                raise InputError(
                    "the default FID extractor is the real-only utility classifier, which did not train; pass --extractor FILE."
                )
            ext = classifier_extractor(
                real_classifier,
                f"CXR classifier trained on {len(train)} real training images ({real_classifier.feature_dim}-d penultimate features, {cfg.classifier_steps} steps)",
            )
        else:
            ext = file_extractor(extractor, cfg.image_size)
        f_hold = ext(ImageColumn(holdout))
        f_syn = ext(ImageColumn(synthetic))
        half = len(f_hold) // 2
        return {
            "extractor": ext.name,
            "feature_dim": ext.dim,
            "fid_synthetic_vs_holdout": frechet_distance(f_hold, f_syn),
            # Real against real for scale; not against the training images, whose features the
            # extractor has fitted and which therefore sit apart from unseen ones.
            "fid_holdout_halves": frechet_distance(f_hold[:half], f_hold[half:]) if half >= 2 else None,
            **(
                {"fid_baseline_vs_holdout": frechet_distance(f_hold, ext(ImageColumn(baseline)))}
                if baseline is not None
                else {}
            ),
            "n_synthetic": len(synthetic),
            "n_holdout": len(holdout),
        }

    record("fidelity", run_stage("fidelity", fidelity, say))

    def diversity() -> dict:
        syn = within_condition_ms_ssim(
            synthetic, cfg.samples_per_condition, cfg.max_conditions, cfg.image_size, cfg.seed
        )
        real = within_condition_ms_ssim(
            concat_view(train, holdout), cfg.samples_per_condition, cfg.max_conditions, cfg.image_size, cfg.seed
        )
        return {
            "synthetic": syn,
            "real": real,
            "note": "MS-SSIM among images of one conditioning; lower is more diverse",
        }

    record("diversity", run_stage("diversity", diversity, say))

    def reports() -> dict:
        mode, cands, refs = reference_pairs(synthetic, concat_view(holdout, train), cfg.max_references)
        return {"references": mode, **report_metrics(cands, refs)} if cands else {"references": mode, "n": 0}

    if any(r.report.strip() for r in metadata_view(concat_view(train, holdout))):
        record("reports", run_stage("report metrics", reports, say))
        record(
            "label_agreement",
            run_stage(
                "label agreement",
                lambda: {
                    "synthetic": label_agreement(metadata_view(synthetic)),
                    "real_holdout": label_agreement(metadata_view(holdout)),
                },
                say,
            ),
        )
    else:
        # Not a pass and not a failure: there is no real report to score text against.
        why = (
            "the real data hold no report text, so report metrics and the labeler's agreement have nothing to compare"
        )
        for name in ("reports", "label_agreement"):
            say(f"== {name}\n   {name}: NO REPORTS - {why}")
            metrics["status"][name] = {"status": NO_REPORTS, "detail": why, "seconds": 0.0}
    if checkpoint:
        record("probe", run_stage("family probe", lambda: family_probe(checkpoint, train, holdout), say))

    # Through the typed result: plain JSON types first (numpy scalars, paths), then the schema.
    result = as_metrics(json.loads(json.dumps(metrics, default=_json_default)), "the evaluation's metrics")
    (out / "metrics.json").write_text(result.to_json(), encoding="utf-8")
    from cxrsynth.eval.page import write_page

    metrics = result.as_dict()
    write_page(out / "index.html", metrics, train, holdout, synthetic, cfg, baseline)
    return metrics


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def summary_lines(metrics: dict) -> list[str]:
    """The headline numbers, for the terminal."""
    lines = []
    fid = metrics.get("fidelity")
    if fid:
        lines.append(
            f"FID synthetic vs real holdout: {fid['fid_synthetic_vs_holdout']:.3f} (real holdout half vs half: {fid['fid_holdout_halves'] if fid['fid_holdout_halves'] is None else round(fid['fid_holdout_halves'], 3)}); extractor: {fid['extractor']}"
        )
    div = metrics.get("diversity")
    if div and div["synthetic"]["mean"] is not None:
        real = div["real"]["mean"]
        lines.append(
            f"MS-SSIM within a conditioning: synthetic {div['synthetic']['mean']:.3f} over {div['synthetic']['pairs']} pairs, real {real if real is None else f'{real:.3f}'}"
        )
    util = metrics.get("utility")
    if util:
        arms = "  ".join(
            f"{a}: {v['macro_auroc']:.3f}" if v["macro_auroc"] is not None else f"{a}: n/a"
            for a, v in util["arms"].items()
        )
        lines.append(f"macro AUROC on real holdout ({util['holdout_records']} records)  {arms}")
        ci = util.get("intervals") or {}
        if util.get("synthetic_to_real") is not None:
            lines.append(
                f"synthetic-only / real-only macro AUROC: {util['synthetic_to_real']:.3f}"
                + format_interval(ci.get("synthetic_to_real"), signed=False)
                + (
                    f"; fine-tuning gain over the base model: {util['fine_tuning_gain']:+.3f}"
                    + format_interval(ci.get("fine_tuning_gain"))
                    if util.get("fine_tuning_gain") is not None
                    else ""
                )
            )
        if util.get("augmentation_gain") is not None:
            lines.append(
                f"real + synthetic minus real-only macro AUROC: {util['augmentation_gain']:+.3f}"
                + format_interval(ci.get("augmentation_gain"))
            )
        if ci:
            lines.append(f"(intervals: {ci['resamples']} resamples of the holdout's records, both arms on each)")
        for site, v in (util.get("sites") or {}).items():
            scores = "  ".join(f"{a}: {fmt(m)}" for a, m in v["macro_auroc"].items())
            gain = (
                f"; gain {v['release_gain']:+.3f}" + format_interval((v.get("intervals") or {}).get("release_gain"))
                if v.get("release_gain") is not None
                else ""
            )
            lines.append(f"{site} alone ({v['train_records']} training records) and with the release: {scores}{gain}")
    rep = metrics.get("reports")
    if rep and rep.get("n"):
        lines.append(
            f"reports ({rep['references']}, n={rep['n']}): "
            + " ".join(f"{k}={rep[k]:.3f}" for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"))
        )
    elif rep is not None:
        lines.append(f"reports: none scored; no synthetic report has a {rep['references']} real reference")
    lab = metrics.get("label_agreement")
    if lab and lab["synthetic"].get("n"):
        lines.append(
            f"label agreement (report vs labels): synthetic exact {lab['synthetic']['exact_agreement']:.3f}, real holdout {lab['real_holdout'].get('exact_agreement', float('nan')):.3f}"
        )
    for name, st in metrics["status"].items():
        if st["status"] != "ok":
            lines.append(f"{name}: {st['status']} - {st['detail']}")
    return lines
