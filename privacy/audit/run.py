"""The audit when one party holds all the data: each site's checks run here, then combine.

The code path is the federated one (site.site_audit per site, combine.combine at the end); only
the transport differs, so a local audit and a federated one give the same figures.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Optional, Sequence

from cxrsynth.config import AuditPolicy
from cxrsynth.data.dataset import require_patient_split, stray_files
from cxrsynth.data.records import Record
from cxrsynth.data.stream import ManifestDataset, RecordView, image_at, metadata_view, subset_view
from cxrsynth.errors import InputError
from cxrsynth.output import check_out, fresh_dir
from cxrsynth.privacy.audit.combine import combine
from cxrsynth.privacy.audit.fidelity import label_counts, report_label_agreement
from cxrsynth.privacy.audit.ledger import dp_ledger_check
from cxrsynth.privacy.audit.page import write_page
from cxrsynth.privacy.audit.phi import phi_scan
from cxrsynth.privacy.audit.results import as_audit
from cxrsynth.privacy.audit.site import Scorer, site_audit
from cxrsynth.progress import Progress


def split_sites(
    train: Sequence[Record], holdout: Sequence[Record]
) -> dict[str, tuple[Sequence[Record], Sequence[Record]]]:
    """site -> (train, holdout); a site with training records but no holdout cannot be calibrated.
    Lazy records (`RecordView`) stay lazy: each site's share is a view of the same dataset."""
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, r in enumerate(metadata_view(train)):
        groups.setdefault(r.site or "local", ([], []))[0].append(i)
    for i, r in enumerate(metadata_view(holdout)):
        key = r.site or "local"
        if key not in groups:
            raise InputError(
                f"holdout record {r.record_id} is from site {key!r}, which has no training records; holdout and training must come from the same sites."
            )
        groups[key][1].append(i)
    return {site: (subset_view(train, tr), subset_view(holdout, ho)) for site, (tr, ho) in groups.items()}


def audit_records(
    synthetic: Sequence[Record],
    train: Sequence[Record],
    holdout: Sequence[Record],
    policy: AuditPolicy,
    *,
    scorer: Optional[Scorer] = None,
    train_state: Optional[dict] = None,
    inputs: Optional[dict] = None,
    progress: Optional[Progress] = None,
    workers: int = 0,
) -> tuple[dict, list[tuple]]:
    """The audit dict and the copy pairs with both images (for the local report).

    `workers` > 0: the sites' checks run side by side in that many spawned processes, one thread
    each (the records go to them as lazy views, `scorer` must pickle: `CheckpointScorer`); every
    check draws from the policy's seed, so the figures are those of one site after another."""
    progress = progress or Progress(quiet=True)
    sites = sorted(split_sites(train, holdout).items())
    if workers > 0 and len(sites) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        progress.say(f"auditing sites {', '.join(s for s, _ in sites)} side by side ({workers} processes)")
        with ProcessPoolExecutor(
            min(workers, len(sites)), mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread
        ) as pool:
            futures = [pool.submit(site_audit, synthetic, tr, ho, policy, scorer, site) for site, (tr, ho) in sites]
            results = []
            for (site, _), future in zip(sites, futures):
                results.append(future.result())
                progress.say(f"[{site}] audited")
    else:
        results = [site_audit(synthetic, tr, ho, policy, scorer, site, progress) for site, (tr, ho) in sites]
    answers, pairs = [], []
    for answer, site_pairs in results:
        answers.append(answer)
        pairs += pair_images(site_pairs, synthetic, train)
    return finish_audit(answers, synthetic, policy, train_state, inputs), pairs


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


class CheckpointScorer:
    """A checkpoint's member scores (`member_scores`), loaded where it is first called: it pickles
    as its path, so a site's audit in another process loads the model there."""

    def __init__(self, checkpoint: Path, model=None):
        """`model`: the checkpoint's model when the caller has loaded it already."""
        self.checkpoint, self._model = Path(checkpoint), model
        if model is not None:
            model.eval()

    def __getstate__(self) -> dict:
        return {"checkpoint": self.checkpoint, "_model": None}

    def __call__(self, records: Sequence[Record]):
        if self._model is None:
            from cxrsynth.checkpoint import load_checkpoint

            self._model, _, _ = load_checkpoint(self.checkpoint)
            self._model.eval()
        return self._model.member_scores(records)


def audit_workers(sites: int, records: int) -> int:
    """Processes for a local audit of `sites` sites over `records` records in all: the CPU's
    cores when the work outweighs starting them (a process takes seconds to start), else none."""
    import torch

    if torch.cuda.is_available() or sites < 2 or records < PARALLEL_MIN_RECORDS:
        return 0
    from cxrsynth.models.base import usable_cores

    cores = usable_cores()
    return min(sites, cores) if cores > 1 else 0


# Below this many records (training, holdout and synthetic, summed over the sites) a local audit
# runs its sites one after another: the tests' audits, and small ones that take seconds.
PARALLEL_MIN_RECORDS = 2000


def pair_images(pairs, synthetic: Sequence[Record], train: Sequence[Record]) -> list[tuple]:
    """(pair, synthetic image, training image) for each flagged copy pair, for the report. Only
    the flagged records' images are read."""
    if not pairs:
        return []

    def positions(records: Sequence[Record], ids: set[str]) -> dict[str, int]:
        return {r.record_id: i for i, r in enumerate(metadata_view(records)) if r.record_id in ids}

    syn_at = positions(synthetic, {p.synthetic_id for p in pairs})
    train_at = positions(train, {p.train_record_id for p in pairs})
    return [
        (
            p,
            image_at(synthetic, syn_at[p.synthetic_id], p.synthetic_view == "lateral"),
            image_at(train, train_at[p.train_record_id], p.train_view == "lateral"),
        )
        for p in pairs
    ]


def finish_audit(
    answers: list[dict],
    synthetic: Sequence[Record],
    policy: AuditPolicy,
    train_state: Optional[dict] = None,
    inputs: Optional[dict] = None,
) -> dict:
    """The sites' answers plus the steward's own checks (PHI scan of the synthetic reports, DP
    ledger of the checkpoint, the labeler's reading of the reports), combined into the audit dict."""
    synthetic = metadata_view(synthetic)  # reports and labels only
    phi = None if "phi" in policy.skip else phi_scan(synthetic, policy.max_phi_findings)
    dp = dp_ledger_check(train_state, policy) if train_state is not None else None
    reports = None if "report_labels" in policy.skip else report_label_agreement(synthetic, policy)
    return combine(answers, policy, phi, dp, inputs, labels={"counts": label_counts(synthetic), "reports": reports})


def open_audit_set(path: Path, what: str) -> RecordView:
    """A dataset directory as lazy records (images decoded when a check reads them), checked as
    `read_audit_set` checks it."""
    # Strict: an audit that skipped an unreadable image could pass a copy it never saw. Every
    # image is decoded once here, one at a time, so a corrupt one is refused before any check runs.
    dataset, _ = ManifestDataset.open(path, strict=True)
    if not len(dataset):
        raise InputError(f"{path}: the {what} dataset has no records.")
    dataset.check_images()
    if what == "synthetic":
        # Every file of the folder ships with a release, so every file must be one the audit reads.
        stray = stray_files(path)
        if stray:
            more = f" and {len(stray) - 10} more" if len(stray) > 10 else ""
            raise InputError(
                f"{path}: {len(stray)} file(s) that manifest.csv does not list, which the audit would not read but a release would ship: "
                f"{', '.join(stray[:10])}{more}. Remove them, or write the synthetic set to a new folder (cxrsynth generate --out)."
            )
    return RecordView(dataset)


def read_audit_set(path: Path, what: str, load_images: bool = True) -> list[Record]:
    """`open_audit_set`, read into memory (every image decoded, so an unreadable one is refused now)."""
    view = open_audit_set(path, what)
    return list(view if load_images else metadata_view(view))


def run_audit(
    synthetic_dir: Path,
    train_dir: Path,
    holdout_dir: Path,
    policy: AuditPolicy,
    out: Path,
    checkpoint: Optional[Path] = None,
    progress: Optional[Progress] = None,
    key=None,
    register: Optional[Path] = None,
) -> dict:
    """`key`: the steward's Ed25519 key; the audit is sealed with it (cxrsynth.privacy.audit.seal)
    and written to the steward's `register` of audits (cxrsynth.privacy.audit.register)."""
    from cxrsynth.privacy.audit.register import models_of, training_digest
    from cxrsynth.privacy.release import tree_hashes

    progress = progress or Progress()
    check_audit_out(out)
    check_register(key, register)
    # Lazy records: every check reads images a batch at a time, so the audit's memory does not
    # grow with the sizes of the sets.
    synthetic = open_audit_set(synthetic_dir, "synthetic")
    train_all = open_audit_set(train_dir, "training")
    same = Path(train_dir).resolve() == Path(holdout_dir).resolve()
    train = subset_view(train_all, [i for i, side in enumerate(train_all.dataset.splits()) if side != "holdout"])
    if same:
        holdout = subset_view(train_all, [i for i, side in enumerate(train_all.dataset.splits()) if side == "holdout"])
    else:
        holdout_all = open_audit_set(holdout_dir, "holdout")
        holdout = subset_view(
            holdout_all, [i for i, side in enumerate(holdout_all.dataset.splits()) if side != "train"]
        )
    if not len(holdout):
        raise InputError(
            f"{holdout_dir}: no holdout records (split column 'holdout'); the audit compares against unseen patients."
        )
    sides = chain(
        (r.with_(split="train") for r in metadata_view(train)),
        (r.with_(split="holdout") for r in metadata_view(holdout)),
    )
    require_patient_split(sides, f"{train_dir} and {holdout_dir}")
    scorer, train_state, ckhash = None, None, None
    if checkpoint is not None:
        from cxrsynth.checkpoint import checkpoint_hash, load_checkpoint

        model, _, train_state = load_checkpoint(checkpoint)
        scorer, ckhash = CheckpointScorer(checkpoint, model), checkpoint_hash(checkpoint)
    inputs = {
        "synthetic": str(synthetic_dir),
        "train": str(train_dir),
        "holdout": str(holdout_dir),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_hash": ckhash,
        "synthetic_files": tree_hashes(synthetic_dir),
        "models": models_of(metadata_view(synthetic)),
        "training_digest": training_digest(metadata_view(train)),
    }
    n_sites = len({r.site or "local" for r in metadata_view(train)})
    workers = audit_workers(n_sites, n_sites * len(synthetic) + len(train) + len(holdout))
    audit, pairs = audit_records(
        synthetic,
        train,
        holdout,
        policy,
        scorer=scorer,
        train_state=train_state,
        inputs=inputs,
        progress=progress,
        workers=workers,
    )
    write_audit(audit, out, pairs, key, register)
    return audit


def check_register(key, register: Optional[Path]) -> None:
    """Before any work: a sealing audit needs the steward's register, readable and intact."""
    from cxrsynth.privacy.audit.register import read, writable

    if key is None:
        return
    if register is None:
        raise InputError("a sealed audit is written to the steward's register of audits; none was given.")
    read(register, key.public_key())
    writable(register)


def _earlier_audit(out: Path) -> bool:
    return (out / "audit.json").is_file()


def check_audit_out(out: Path) -> None:
    """Refuse an --out that is a file or a folder holding anything but an earlier audit, before any work."""
    check_out(Path(out), is_own=_earlier_audit, hint="give the folder of an earlier audit, which is then replaced")


def write_audit(
    audit: dict, out: Path, pairs: Sequence[tuple] = (), key=None, register: Optional[Path] = None
) -> None:
    """audit.json, report.html and, with the steward's key, the seal; written whole into `out`
    (new, empty or an earlier audit's folder, which is replaced). A sealed audit first counts the
    earlier audits of its model in the steward's `register` (a check of its own) and is then
    written to it, passed or failed."""
    from cxrsynth.privacy.audit import register as reg
    from cxrsynth.privacy.audit.seal import seal_audit
    from cxrsynth.privacy.audit.verdict import check_reasons
    from cxrsynth.privacy.release import sha256_file

    if key is not None:
        check_register(key, register)
        figures = reg.earlier(reg.read(register, key.public_key()), reg.subject(audit))
        reasons = check_reasons(reg.CHECK, figures, as_audit(audit, "the audit being written").policy)
        audit["checks"][reg.CHECK] = {"passed": not reasons, **figures, "reasons": reasons}
        audit["passed"] = all(c["passed"] for c in audit["checks"].values())
    with fresh_dir(
        Path(out), is_own=_earlier_audit, hint="give the folder of an earlier audit, which is then replaced"
    ) as tmp:
        # Written through the typed result: what the gate and the card will read back is checked here.
        (tmp / "audit.json").write_text(as_audit(audit, "the audit being written").to_json(), encoding="utf-8")
        write_page(audit, tmp, pairs)
        if key is not None:
            seal_audit(tmp, key)
            # Registered once sealed, before the folder is in place: an audit that exists is in the register.
            reg.append(register, key, audit, sha256_file(tmp / "audit.json"))
