"""The privacy-utility frontier: what each epsilon costs, per family, on a real holdout.

For each family, a base model is pretrained once on a public part (no DP, no site data); then for
each epsilon and seed the demo's pipeline runs on the sites' part: de-identification, federated
fine-tuning from the base with DP-SGD at that epsilon (noise multiplier solved for the site with
the highest sample rate, so every site stays within it), generation (fine-tuned and base-only, same
label sets), evaluation (classifiers trained on real, synthetic, real + synthetic and base-only
synthetic, scored on the sites' real holdout; FID against the holdout's half-vs-half baseline) and
the privacy audit (copies, membership inference, label fidelity). "no DP" fine-tunes without noise.

Data: the demo's phantom hospitals and public phantom cohort by default; `--real DIR` takes a
dataset folder made by `cxrsynth data ingest` and splits it by patient into a public part (for the
base) and 3 sites, keeping the folder's train/holdout split. Writes results.json, results.md and
frontier.png under `--out`; run time is printed per cell (one cell is several minutes on 2 cores).

    python benchmarks/bench_utility.py --out runs/bench-utility                      # phantom
    cxrsynth data ingest --source manifest --path ../shared/data/realcxr/nih_manifest.csv --labels nih \\
        --ignore-columns id,sex,age,label_str,abnormal,source_repo,source_commit,source_path,license --out runs/nih
    python benchmarks/bench_utility.py --real runs/nih --out runs/bench-utility-nih
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DELTA = 1e-5


def parse_epsilon(text: str) -> Optional[float]:
    return None if text.strip().lower() in ("none", "nodp", "inf") else float(text)


def epsilon_name(eps: Optional[float]) -> str:
    return "no DP" if eps is None else f"{eps:g}"


def noise_for(epsilon: float, sample_rate: float, steps: int, accountant: str, before: Optional[list] = None) -> float:
    """The noise multiplier that spends `epsilon` (at DELTA) in `steps` steps at `sample_rate`,
    after the releases of the accountant history `before` (the sites' looks)."""
    from opacus.accountants.utils import get_noise_multiplier

    if before:
        from cxrsynth.config import DPConfig
        from cxrsynth.privacy.dp import epsilon_of

        dp = DPConfig(enabled=True, delta=DELTA, accountant=accountant)
        lo, hi = 0.3, 64.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (
                (lo, mid) if epsilon_of([*before, (mid, sample_rate, steps)], dp) <= epsilon * 0.995 else (mid, hi)
            )
        return hi
    # A hair under the target, so rounding in the site's own accountant never refuses the last round.
    return float(
        get_noise_multiplier(
            target_epsilon=epsilon * 0.995,
            target_delta=DELTA,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.005,
        )
    )


def split_public(records: list, public_fraction: float, sites: int, seed: int) -> tuple[list, list]:
    """Patients of a real folder: a public part (the base's), the rest spread over `sites` sites."""
    from cxrsynth.data.split import _unit

    public, site_records = [], []
    for r in records:
        u = _unit(r.patient_id, seed + 1000)
        if u < public_fraction:
            public.append(r.with_(split="train"))
        else:
            k = int((u - public_fraction) / (1 - public_fraction) * sites)
            site_records.append(r.with_(site=f"site-{min(k, sites - 1)}"))
    return public, site_records


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_settings(items: list[str]) -> dict:
    """`--set model.guidance=3 --set train.steps=100` as a nested override of the family's preset."""
    import yaml

    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        if not _ or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. model.guidance=3")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def make_cell_class():
    from cxrsynth.server.demo import Demo

    class Cell(Demo):
        """One (family, epsilon, seed) run of the demo's pipeline, from a shared base; no release."""

        site_records: Optional[list] = None
        target_epsilon: Optional[float] = None
        settings: dict = {}

        def run_config(self, **overrides):
            # `--set` wins over what the demo's stages set.
            return super().run_config(**merge(overrides, self.settings))

        def phantom(self) -> dict:
            if self.site_records is None:
                return super().phantom()
            from cxrsynth.data.dataset import write_dataset

            self.raw = self.site_records
            per_site = {}
            for site in sorted({r.site for r in self.raw}):
                mine = [r for r in self.raw if r.site == site]
                write_dataset(self.out / "sites" / site / "raw", mine)
                per_site[site] = {"studies": len(mine), "holdout": sum(r.split == "holdout" for r in mine)}
            return {"per_site": per_site, "studies": len(self.raw), "example_raw_report": ""}

        def federate(self) -> dict:
            from cxrsynth.config import load_config
            from cxrsynth.train import dp_sampling

            c = self.cfg
            if self.target_epsilon is not None:
                dp = load_config(f"{c.family}-tiny").dp
                train = [r for r in self.clean if r.split != "holdout"]
                rates = [
                    dp_sampling([r for r in train if r.site == s], c.batch_size, dp.privacy_unit)[1]
                    for s in sorted({r.site for r in train})
                ]
                # The looks as the federated stage will run them: the demo's setting, unless `--set` says otherwise.
                fed = self.run_config(federation={"acquisition": c.site_looks}).federation
                looks = [(fed.acquisition_noise, 1.0, 1)] if fed.acquisition else None
                sigma = noise_for(self.target_epsilon, max(rates), c.rounds * c.local_steps, dp.accountant, looks)
                self.cfg = c.model_copy(update={"noise_multiplier": sigma, "epsilon_budget": self.target_epsilon})
                self.say(
                    f"   noise multiplier {sigma:.3f} for epsilon {self.target_epsilon:g} (highest site sample rate {max(rates):.3f})"
                )
            return super().federate()

        def run(self):
            from cxrsynth.eval.stages import OK

            t0 = time.perf_counter()
            self.run_to_audit()  # a cell's measurements need no release
            self.facts["seconds"] = time.perf_counter() - t0
            self.summary()
            for s in self.stages:
                if s.status != OK:
                    print(f"   {s.name}: {s.status}: {s.detail[:400]}", file=sys.stderr)
            return [s for s in self.stages if s.status != OK]

    return Cell


def summarize(cell) -> dict:
    """The numbers of one cell, read from its outputs."""
    by = {s.name: s for s in cell.stages}
    row: dict = {
        "seconds": round(cell.facts.get("seconds", 0.0), 1),
        "status": {s.name: s.status for s in cell.stages},
    }
    fed = by.get("federated fine-tuning (DP-SGD)")
    if fed is not None and fed.ok:
        ledger = fed.value.get("privacy_ledger") or {}
        sites = ledger.get("sites") or {}
        eps = [v.get("epsilon") for v in sites.values() if isinstance(v, dict) and v.get("epsilon") is not None]
        row["epsilon_max"] = max(eps) if eps else (0.0 if cell.cfg.noise_multiplier == 0 else None)
        row["noise_multiplier"] = cell.cfg.noise_multiplier
    ev = by.get("evaluation")
    if ev is not None and ev.ok:
        m = ev.value["metrics"]
        u = m.get("utility") or {}
        arms = u.get("arms", {})
        for arm in ("real", "synthetic", "real+synthetic", "base-only synthetic"):
            row[f"auroc_{arm}"] = (arms.get(arm) or {}).get("macro_auroc")
        row["synthetic_to_real"] = u.get("synthetic_to_real")
        row["fine_tuning_gain"] = u.get("fine_tuning_gain")
        row["augmentation_gain"] = u.get("augmentation_gain")
        row["intervals"] = u.get("intervals")  # 95%, over resamples of the holdout
        fid = m.get("fidelity") or {}
        row["fid"] = fid.get("fid_synthetic_vs_holdout")
        row["fid_holdout_halves"] = fid.get("fid_holdout_halves")
        row["fid_base"] = fid.get("fid_baseline_vs_holdout")
        row["report_label_agreement"] = ((m.get("label_agreement") or {}).get("synthetic") or {}).get(
            "exact_agreement"
        )
    au = by.get("privacy audit")
    if au is not None and au.ok:
        checks = au.value.get("checks", {})
        row["audit_passed"] = au.value.get("passed")
        row["audit_failed"] = sorted(k for k, v in checks.items() if not v.get("passed"))
        lf = checks.get("label_fidelity", {})
        row["label_fidelity"] = lf.get("macro_auroc")
        mem = checks.get("membership", {})
        row["mia_auc"] = mem.get("auc", mem.get("pooled_auc"))
        cp = checks.get("image_copies", {})
        row["copies"] = cp.get("copies", cp.get("n_copies"))
    return row


COLUMNS = (
    ("epsilon_max", "epsilon (max site)"),
    ("auroc_real", "real-only"),
    ("auroc_synthetic", "synthetic-only"),
    ("auroc_real+synthetic", "real + synthetic"),
    ("auroc_base-only synthetic", "base-only synthetic"),
    ("synthetic_to_real", "syn / real"),
    ("label_fidelity", "label fidelity"),
    ("report_label_agreement", "report label agreement"),
    ("fid", "FID"),
    ("fid_holdout_halves", "FID holdout halves"),
    ("mia_auc", "MIA AUC"),
    ("copies", "copies"),
)


def _fmt(values: list) -> str:
    vals = [v for v in values if isinstance(v, (int, float)) and v is not None]
    if not vals:
        return "n/a"

    def one(v: float) -> str:
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"

    if len(vals) == 1:
        return one(vals[0])
    return f"{one(statistics.median(vals))} ({one(min(vals))}-{one(max(vals))})"


def write_results(out: Path, rows: list[dict], meta: dict) -> None:
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2, default=str), encoding="utf-8"
    )
    lines = [
        f"# Privacy-utility frontier ({meta['data']})",
        "",
        f"Measured {meta['date']} on {meta['machine']}; command: `{meta['command']}`.",
        "Macro AUROC on the sites' real holdout; median (min-max) over seeds "
        + ", ".join(map(str, meta["seeds"]))
        + ".",
        "",
        "| family | target epsilon | " + " | ".join(title for _, title in COLUMNS) + " | audit passed | seconds |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["family"], r["target"]), []).append(r)
    for (family, target), rs in groups.items():
        cells = [_fmt([r.get(k) for r in rs]) for k, _ in COLUMNS]
        passed = f"{sum(bool(r.get('audit_passed')) for r in rs)}/{len(rs)}"
        lines.append(
            f"| {family} | {target} | " + " | ".join(cells) + f" | {passed} | {_fmt([r.get('seconds') for r in rs])} |"
        )
    failed = sorted({f for r in rows for f in r.get("audit_failed") or []})
    if failed:
        lines += ["", "Audit checks that failed in some cell: " + ", ".join(failed) + "."]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(out / "frontier.png", rows, meta)


def plot(path: Path, rows: list[dict], meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    families = sorted({r["family"] for r in rows})
    targets = []
    for r in rows:
        if r["target"] not in targets:
            targets.append(r["target"])
    xs = {t: i for i, t in enumerate(targets)}
    for fam in families:
        for key, style, what in (
            ("auroc_synthetic", "o-", "synthetic-only"),
            ("auroc_base-only synthetic", "x:", "base-only"),
        ):
            pts = []
            for t in targets:
                vals = [r.get(key) for r in rows if r["family"] == fam and r["target"] == t and r.get(key) is not None]
                if vals:
                    pts.append((xs[t], statistics.median(vals), min(vals), max(vals)))
            if pts:
                x, y, lo, hi = zip(*pts)
                ax.errorbar(
                    x,
                    y,
                    yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                    fmt=style,
                    capsize=3,
                    label=f"{fam} {what}",
                )
    real = [r.get("auroc_real") for r in rows if r.get("auroc_real") is not None]
    if real:
        ax.axhline(statistics.median(real), color="k", lw=1, label="real-only")
        ax.axhline(0.9 * statistics.median(real), color="k", lw=0.8, ls="--", label="0.9 x real-only")
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_xticks(range(len(targets)), [f"epsilon {t}" if t != "no DP" else t for t in targets])
    ax.set_ylabel("macro AUROC on the real holdout")
    ax.set_title(f"privacy-utility frontier: {meta['data']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--real", help="dataset folder from `cxrsynth data ingest` (default: phantom hospitals)")
    p.add_argument("--families", default="ldm", help="comma-separated families (default: ldm)")
    p.add_argument(
        "--epsilons", default="none,8", help="comma-separated per-site epsilons; 'none' = no DP (default: none,8)"
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--public-fraction", type=float, default=0.3, help="--real: share of patients in the public part")
    p.add_argument("--public-studies", type=int, default=3000, help="phantom: studies of the public cohort")
    p.add_argument("--studies", type=int, default=900, help="phantom: studies over all hospitals")
    p.add_argument("--pretrain-steps", type=int, help="base training steps (default: the preset's)")
    p.add_argument("--bases", help="folder holding a base per family (<family>/base.json) to reuse")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="DP-SGD per-sample clipping norm")
    p.add_argument("--conditions", type=int, default=160)
    p.add_argument(
        "--public-styles",
        type=int,
        default=None,
        help="phantom: acquisition styles of the public cohort (default: the library's, 8)",
    )
    p.add_argument(
        "--public-labels",
        default=None,
        help="phantom: the public cohort's label vocabulary, or 'all' for all 14 labels stated (default: the library's, all)",
    )
    p.add_argument("--classifier-steps", type=int, default=600)
    p.add_argument("--eval-image-size", type=int, help="side the utility classifier sees (default: the model's)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset key for base and cells, e.g. model.modalities=[frontal,labels]",
    )
    p.add_argument("--quick", action="store_true", help="seconds-long settings that check the bench runs")
    p.add_argument("--out", default="runs/bench-utility")
    a = p.parse_args(argv)

    import platform

    import torch

    torch.set_num_threads(1)
    from cxrsynth.config import load_config
    from cxrsynth.pretrained import pretrain, public_phantom, read_card
    from cxrsynth.progress import Progress
    from cxrsynth.server.demo import QUICK, demo_config

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    families = [f.strip() for f in a.families.split(",") if f.strip()]
    epsilons = [parse_epsilon(e) for e in a.epsilons.split(",") if e.strip()]
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    settings = parse_settings(a.set)
    progress = Progress(quiet=True)
    demo_over = dict(
        studies=a.studies,
        public_studies=a.public_studies,
        rounds=a.rounds,
        local_steps=a.local_steps,
        batch_size=a.batch_size,
        max_grad_norm=a.max_grad_norm,
        conditions=a.conditions,
        eval_classifier_steps=a.classifier_steps,
    )
    if a.quick:
        demo_over.update({k: v for k, v in QUICK.items() if k in demo_over or k == "holdout_fraction"})
        demo_over["batch_size"] = 8
    site_records = public = None
    if a.real:
        from cxrsynth.data.dataset import read_dataset

        records, _ = read_dataset(a.real)
        public, site_records = split_public(records, a.public_fraction, 3, 0)
        data_name = (
            f"{Path(a.real).name}: {len(records)} studies, {len(public)} public, {len(site_records)} at 3 sites"
        )
    else:
        data_name = f"phantom: {a.studies} studies at 3 hospitals, public cohort {a.public_studies}"
    meta = {
        "data": data_name,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread",
        "command": "python benchmarks/bench_utility.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seeds": seeds,
        "settings": settings,
        "bases": {},
    }
    Cell = make_cell_class()
    rows: list[dict] = []
    for family in families:
        base = Path(a.bases) / family if a.bases else out / "bases" / family
        if not (base / "base.json").is_file():
            steps = QUICK["pretrain_steps"] if a.quick else a.pretrain_steps
            cfg = load_config(
                f"{family}-tiny",
                merge(
                    settings,
                    {"train": {"num_threads": 1, **({"steps": steps} if steps else {})}, "dp": {"enabled": False}},
                ),
            )
            if public is not None:
                recs, name = public, f"{data_name} (public part, patients disjoint from the sites')"
            else:
                styles = {"sites": a.public_styles} if a.public_styles else {}
                if a.public_labels:
                    styles["vocabulary"] = None if a.public_labels == "all" else a.public_labels
                recs, name = public_phantom(
                    cfg, QUICK["public_studies"] if a.quick else a.public_studies, seed=1, **styles
                )
            t0 = time.perf_counter()
            print(
                f"[{family}] pretraining the base on {len(recs)} public studies ({cfg.train.steps} steps)",
                file=sys.stderr,
            )
            pretrain(cfg, recs, base, name, progress=progress)
            meta["bases"][family] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "steps": cfg.train.steps,
                "records": len(recs),
            }
        else:
            meta["bases"][family] = {"reused": str(base), "sha256": read_card(base).sha256}
        for eps in epsilons:
            for seed in seeds:
                name = f"{family}-eps{epsilon_name(eps).replace(' ', '')}-seed{seed}"
                cell_dir = out / "cells" / name
                print(f"[{name}] running", file=sys.stderr)
                over = dict(
                    demo_over,
                    base=base,
                    seed=seed,
                    dp_enabled=eps is not None,
                    noise_multiplier=0.0 if eps is None else 1.0,
                )
                if eps is not None:
                    over["epsilon_budget"] = eps
                cfg = demo_config(family, False, **over)
                if cell_dir.exists():
                    shutil.rmtree(cell_dir)
                cell_dir.mkdir(parents=True)
                cell = Cell(cell_dir, cfg, progress)
                cell.site_records = site_records
                cell.target_epsilon = eps
                cell.settings = settings
                if a.eval_image_size or a.real:
                    cell.eval_image_size = a.eval_image_size or load_config(f"{family}-tiny").model.image_size
                cell.run()
                row = {"family": family, "target": epsilon_name(eps), "seed": seed, **summarize(cell)}
                rows.append(row)
                print(
                    f"[{name}] " + json.dumps({k: v for k, v in row.items() if k != "status"}, default=str),
                    file=sys.stderr,
                )
                write_results(out, rows, meta)
    print(f"wrote {out / 'results.md'} and {out / 'frontier.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
