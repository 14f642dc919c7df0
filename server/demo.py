"""`cxrsynth demo`: the main job end to end on phantom data, with one HTML overview.

public phantom cohort -> pretraining of a base model (no DP, no site data) -> phantom data for 3
hospitals (PHI in the reports) -> de-identification with its audit log -> federated DP-SGD
fine-tuning of the base in Flower's simulation engine -> generation (and the base model's own
samples, for comparison) -> evaluation -> privacy and fidelity audit -> signed release or a
refusal with reasons -> out/index.html.

Why a base: DP-SGD on a few hundred studies a site cannot teach a generator from scratch what a
chest X-ray looks like; a model pretrained on public data, then fine-tuned privately, can
(Ghalebikesabi et al. 2023; DP-LDM, Lyu et al. 2023). The public cohort here is a phantom cohort
in other acquisition styles and another label mix than the hospitals', as public data differs
from a hospital's; the evaluation scores the base's own samples beside the fine-tuned ones, so
the page shows what the sites' data added.

Every stage is called through its public API. A stage whose code is not there yet is reported as
"not built yet", and the stages that need its output are skipped, never fed with stand-ins:
de-identification in particular fails closed, so nothing trains on reports that were not
de-identified. Every number on the overview is read from this run's outputs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxrsynth.eval.stages import FAILED, NOT_BUILT, OK, REFUSED, StageResult, run_stage, skipped
from cxrsynth.progress import Progress


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = "ldm"
    studies: int = Field(900, ge=30, description="phantom studies over all hospitals")
    sites: int = Field(3, ge=2)
    image_size: int = 32
    holdout_fraction: float = 0.2
    public_studies: int = Field(
        3000, ge=10, description="studies of the public phantom cohort the base is pretrained on"
    )
    pretrain_steps: Optional[int] = Field(None, ge=1, description="none: the preset's train.steps")
    base: Optional[Path] = Field(
        None, description="a base from `cxrsynth pretrain` to fine-tune instead of pretraining one here"
    )
    rounds: int = Field(2, ge=1)
    local_steps: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=2)
    dp_enabled: bool = Field(
        True, description="false: fine-tune without DP (benchmarks only; the audit then does not require DP)"
    )
    noise_multiplier: float = Field(1.5, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    epsilon_budget: float = Field(
        8.0, gt=0.0, description="each site's DP budget (delta 1e-5); the audit requires DP within it"
    )
    seeded_noise: bool = Field(
        False, description="DP noise from the seed (reproducible runs: tests, benchmarks), dp.seeded_noise"
    )
    site_looks: bool = Field(
        True,
        description="the sites share their looks (grey-level quantiles, DP) and the release is rendered in them (federation.acquisition)",
    )
    # RoentGen (Chambon et al., sec. 3.3) scores diversity over 4 samples per prompt.
    samples_per_condition: int = 4
    # 1,280 records: a release twice the 640 of before is more useful on the sites' holdout (its
    # synthetic-only and real + synthetic classifiers; README, "How large a release"), and the two
    # sets are generated side by side, so the stage takes the time the smaller one did.
    conditions: int = Field(
        320,
        ge=1,
        description="label sets drawn from the sites' label mix; synthetic = conditions x samples_per_condition",
    )
    eval_classifier_steps: int = 600
    seed: int = 0

    @field_validator("family")
    @classmethod
    def _registered(cls, name: str) -> str:
        from cxrsynth.models import registry

        try:
            return registry.get(name).name
        except registry.FamilyError as e:
            raise ValueError(str(e)) from None


# The audit calibrates its copy threshold on at least 20 holdout records per site
# (cxrsynth.privacy.audit.images), hence the larger holdout share in the shortened run.
QUICK = dict(
    studies=210,
    holdout_fraction=0.5,
    public_studies=60,
    pretrain_steps=6,
    rounds=1,
    local_steps=4,
    conditions=12,
    eval_classifier_steps=40,
)


class Demo:
    eval_image_size: Optional[int] = None  # the utility classifier's input side; None: EvalConfig's

    def __init__(self, out: Path, cfg: DemoConfig, progress: Progress):
        self.out, self.cfg, self.progress = out, cfg, progress
        self.stages: list[StageResult] = []
        self.facts: dict = {}

    def say(self, text: str) -> None:
        self.progress.say(text)

    def stage(self, name: str, fn, needs: tuple[str, ...] = ()) -> StageResult:
        blocked = [s for s in self.stages if s.name in needs and s.status != OK]
        if blocked:
            b = blocked[0]
            result = skipped(name, f"needs '{b.name}', which is {b.status}", self.say)
        else:
            result = run_stage(name, fn, self.say)
        self.stages.append(result)
        return result

    # ---- stages -----------------------------------------------------------------------------
    def run_config(self, **overrides):
        """The family's tiny preset at the demo's image size, with `overrides`."""
        from cxrsynth.config import load_config

        c = self.cfg
        base = {"data": {"phantom": {"image_size": c.image_size}}, "train": {"num_threads": 1, "seed": c.seed}}
        for key, value in overrides.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        return load_config(f"{c.family}-tiny", base)

    def pretrain(self) -> dict:
        from cxrsynth.pretrained import pretrain, public_phantom, read_card

        c = self.cfg
        if c.base is not None:
            card = read_card(c.base)
            self.base = Path(c.base)
            return {"card": card.model_dump(), "path": str(self.base), "reused": True}
        over = {"dp": {"enabled": False}}
        if c.pretrain_steps:
            over["train"] = {"steps": c.pretrain_steps}
        cfg = self.run_config(**over)
        records, source = public_phantom(cfg, c.public_studies, seed=c.seed + 1)
        self.base = self.out / "base"
        card = pretrain(cfg, records, self.base, source, progress=self.progress)
        return {"card": card.model_dump(), "path": "base", "reused": False}

    def phantom(self) -> dict:
        from cxrsynth.data.dataset import write_dataset
        from cxrsynth.data.phantom import make_phantom
        from cxrsynth.data.split import split_by_patient

        c = self.cfg
        records = make_phantom(n=c.studies, sites=c.sites, seed=c.seed, image_size=c.image_size, lateral=True)
        records = split_by_patient(records, c.holdout_fraction, c.seed)
        self.raw = records
        per_site = {}
        for site in sorted({r.site for r in records}):
            mine = [r for r in records if r.site == site]
            write_dataset(self.out / "sites" / site / "raw", mine)
            per_site[site] = {
                "studies": len(mine),
                "patients": len({r.patient_id for r in mine}),
                "holdout": sum(r.split == "holdout" for r in mine),
            }
        return {"per_site": per_site, "studies": len(records), "example_raw_report": _with_header(records[0])}

    def deid(self) -> dict:
        from cxrsynth.data.dataset import write_dataset
        from cxrsynth.privacy.deid import deidentify_records
        from cxrsynth.privacy.deid.config import DeidConfig

        # Typed tags, not surrogates: text that trains a generator should hold no name-shaped
        # strings at all, or the model learns to write them and the audit's PHI scan (which
        # cannot tell a surrogate from a real name) rightly refuses the release.
        config = DeidConfig(mode="redact")
        clean, quarantined, per_site = [], [], {}
        sites = sorted({r.site for r in self.raw})
        bar = self.progress.task("de-identify sites", len(sites))
        for site in sites:
            mine = [r for r in self.raw if r.site == site]
            log = self.out / "sites" / site / "deid-audit.jsonl"
            ok, q = deidentify_records(mine, config, log)
            clean += ok
            quarantined += list(q)
            per_site[site] = {
                "in": len(mine),
                "clean": len(ok),
                "quarantined": len(q),
                "audit_log": str(log.relative_to(self.out)),
            }
            bar.advance(1, f"{site}: {len(ok)} clean, {len(q)} quarantined")
        if not clean:
            from cxrsynth.errors import CheckFailed

            raise CheckFailed("de-identification quarantined every record; nothing may train.")
        self.clean = clean
        data = self.out / "data"
        write_dataset(data / "all", clean)
        write_dataset(data / "train", [r for r in clean if r.split != "holdout"])
        write_dataset(data / "holdout", [r for r in clean if r.split == "holdout"])
        before = self.raw[0]
        after = next((r for r in clean if r.record_id == before.record_id), None)
        return {
            "per_site": per_site,
            "quarantined": len(quarantined),
            "before": _with_header(before),
            "after": after.report if after is not None else "(quarantined)",
        }

    def federate(self) -> dict:
        from cxrsynth.server.simulate import simulate
        from cxrsynth.server.state import last_round

        c = self.cfg
        run_cfg = self.run_config(
            name=f"demo-{c.family}",
            data={"path": str(self.out / "data" / "all")},
            train={"batch_size": c.batch_size, "init_from": str(self.base)},
            dp={
                "enabled": c.dp_enabled,
                "noise_multiplier": c.noise_multiplier,
                "max_grad_norm": c.max_grad_norm,
                "epsilon_budget": c.epsilon_budget,
                "seeded_noise": c.seeded_noise,
            },
            federation={
                "sites": c.sites,
                "rounds": c.rounds,
                "local_steps": c.local_steps,
                "min_sites": c.sites,
                "partition": "by-site",
                "acquisition": c.site_looks,
            },
        )
        fl_out = self.out / "fl"
        simulate(run_cfg, fl_out, progress=self.progress)
        ckpt = last_round(fl_out)
        if ckpt is None:
            raise RuntimeError(f"the federated run left no completed round in {fl_out}")
        self.checkpoint = ckpt
        state = json.loads((ckpt / "train_state.json").read_text(encoding="utf-8"))
        return {
            "checkpoint": str(ckpt.relative_to(self.out)),
            "rounds": state.get("round"),
            "history": state.get("history", []),
            "privacy_ledger": state.get("privacy_ledger"),
            "site_looks": state.get("site_looks"),
        }

    def generate(self) -> dict:
        """The release candidates from the fine-tuned model, and the base model's own samples for
        the same conditions (never released; the evaluation's baseline)."""
        from cxrsynth.checkpoint import load_checkpoint
        from cxrsynth.generate import generate_side_by_side
        from cxrsynth.models.condition import Condition

        c = self.cfg
        model, _, _ = load_checkpoint(self.checkpoint)
        # Label sets from the sites' label mix (the federation fitted it from their counts).
        sets = model.draw_labels(c.conditions, seed=c.seed)
        n = c.conditions * c.samples_per_condition
        conditions = (
            None if sets is None else [Condition(labels=s) for s in sets for _ in range(c.samples_per_condition)]
        )
        jobs = [(self.checkpoint, self.out / "synthetic"), (self.base, self.out / "base-synthetic")]
        # The base sampled as the fine-tuned model is (guidance, steps), so the two sets differ by the weights alone.
        sampling = {key: getattr(model.config, key) for key in model.sampling_keys}
        generate_side_by_side(jobs, n, seed=c.seed, conditions=conditions, progress=self.progress, sampling=sampling)
        drawn = (
            "none (prior samples)"
            if sets is None
            else f"{c.conditions} label sets drawn from the sites' label mix x {c.samples_per_condition}"
        )
        return {"records": n, "conditioned_on": drawn, "base_samples": "base-synthetic"}

    def evaluate(self) -> dict:
        from cxrsynth.eval.config import EvalConfig
        from cxrsynth.eval.evaluate import run_evaluation, summary_lines

        size = {"image_size": self.eval_image_size} if self.eval_image_size else {}
        cfg = EvalConfig(
            classifier_steps=self.cfg.eval_classifier_steps,
            samples_per_condition=self.cfg.samples_per_condition,
            seed=self.cfg.seed,
            **size,
        )
        metrics = run_evaluation(
            self.out / "synthetic",
            self.out / "data" / "all",
            self.out / "eval",
            cfg,
            checkpoint=self.checkpoint,
            progress=self.progress,
            baseline_dir=self.out / "base-synthetic",
        )
        for line in summary_lines(metrics):
            self.say("   " + line)
        return {"metrics": metrics, "page": "eval/index.html"}

    def audit(self) -> dict:
        import yaml

        from cxrsynth.privacy.audit.commands import audit

        out = self.out / "audit"
        # The default policy, and DP required within the sites' budget.
        policy = self.out / "audit-policy.yaml"
        rules = {"require_dp": True, "epsilon_budget": self.cfg.epsilon_budget} if self.cfg.dp_enabled else {}
        policy.write_text(yaml.safe_dump(rules), encoding="utf-8")
        args = argparse.Namespace(
            synthetic=str(self.out / "synthetic"),
            train=str(self.out / "data" / "train"),
            holdout=str(self.out / "data" / "holdout"),
            policy=str(policy),
            checkpoint=str(self.checkpoint),
            out=str(out),
            key=str(self.steward_key()),
            quiet=self.progress.quiet,
        )
        code = _call(audit, args)
        report = json.loads((out / "audit.json").read_text(encoding="utf-8"))
        self.audit_passed = bool(report.get("passed")) and code == 0
        return {
            "exit_code": code,
            "passed": self.audit_passed,
            "checks": report.get("checks", {}),
            "flagged": report.get("flagged", {}),
        }

    def steward_key(self) -> Path:
        """The demo steward's key, made here on purpose (never implicitly by the gate); it seals the
        audit and signs the release, and is kept across reruns of the same demo folder."""
        from cxrsynth.privacy.keys import make_key

        path = self.out / "keys" / "steward.pem"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            make_key(path)
        return path

    def release(self) -> dict:
        from cxrsynth.privacy.release import command

        out = self.out / "release"
        args = argparse.Namespace(
            synthetic=str(self.out / "synthetic"),
            audit=str(self.out / "audit"),
            key=str(self.steward_key()),
            out=str(out),
            quiet=self.progress.quiet,
        )
        code = _call(command, args)
        files = sorted(str(p.relative_to(self.out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
        return {"exit_code": code, "released": code == 0, "files": files[:20]}

    def run_to_audit(self) -> None:
        """Every stage before the release decision, each after the ones it needs."""
        self.stage("pretraining on public data", self.pretrain)
        self.stage("phantom data", self.phantom)
        self.stage("de-identification", self.deid, needs=("phantom data",))
        self.stage(
            "federated fine-tuning (DP-SGD)", self.federate, needs=("de-identification", "pretraining on public data")
        )
        self.stage("generation", self.generate, needs=("federated fine-tuning (DP-SGD)",))
        self.stage("evaluation", self.evaluate, needs=("generation",))
        self.stage("privacy audit", self.audit, needs=("generation",))

    def run(self) -> list[StageResult]:
        t0 = time.perf_counter()
        self.run_to_audit()
        rel = self.stage("release", self.release, needs=("privacy audit",))
        if rel.ok and not rel.value["released"]:
            audit = next(s for s in self.stages if s.name == "privacy audit").value
            failed = [name for name, check in audit["checks"].items() if not check.get("passed")]
            rel.status, rel.detail = (
                REFUSED,
                f"the release gate refused: audit check(s) failed: {', '.join(failed) or 'none listed'}",
            )
        self.facts["seconds"] = time.perf_counter() - t0
        from cxrsynth.eval.demo_page import write_page

        write_page(self.out / "index.html", self)
        self.summary()
        return self.stages

    def summary(self) -> None:
        self.say("\n== demo summary")
        for s in self.stages:
            self.say(f"   {s.name:<30} {s.status:<14} {s.seconds:7.1f}s  {s.detail[:120]}")
        self.say(f"   total {self.facts['seconds']:.1f}s; overview: {self.out / 'index.html'}")


def _with_header(rec) -> str:
    """A raw report as the site holds it: PHI header fields, then the text (which may carry PHI too)."""
    header = "\n".join(f"{k}: {v}" for k, v in rec.phi_meta.items())
    return (header + "\n" if header else "") + rec.report


def _call(handler, args: argparse.Namespace) -> int:
    """A command handler's exit code; a CheckFailed it raises counts as exit 1, as on the command line."""
    from cxrsynth.errors import CheckFailed

    try:
        return int(handler(args) or 0)
    except CheckFailed:
        return 1


MARKER = "demo.json"
STAGE_DIRS = ("base", "sites", "data", "fl", "synthetic", "base-synthetic", "eval", "audit", "release")


def _clear_previous(out: Path) -> None:
    """A demo directory is rewritten whole; a directory the demo did not make is never touched."""
    import shutil

    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / MARKER).is_file():
        from cxrsynth.errors import InputError

        raise InputError(f"--out {out}: exists and was not made by `cxrsynth demo`; choose an empty or new directory.")
    for name in STAGE_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def demo_config(family: str, quick: bool, **overrides) -> DemoConfig:
    return DemoConfig(family=family, **{**(QUICK if quick else {}), **overrides})


def run_demo(
    out: str | Path, family: str = "ldm", quick: bool = False, progress: Optional[Progress] = None, **overrides
) -> Demo:
    import torch

    torch.set_num_threads(1)
    out = Path(out)
    _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"family": family, "quick": quick}), encoding="utf-8")
    demo = Demo(out, demo_config(family, quick, **overrides), progress or Progress())
    demo.run()
    return demo


def command(args: argparse.Namespace) -> int:
    extra = {"seed": args.seed, **({"base": Path(args.base)} if args.base else {})}
    demo = run_demo(args.out, args.family, args.quick, Progress(args.quiet), **extra)
    # A refused release is a result, not an error; a crashed stage is one, and so is one not built.
    if any(s.status == FAILED for s in demo.stages):
        return 1
    return 2 if any(s.status == NOT_BUILT for s in demo.stages) else 0
