"""Memory and speed at hospital scale: peak resident memory of ingest, training (100 steps),
generation and the audit at 1k, 10k (and, asked for, 100k) phantom studies of 64x64 pixels,
and the growth from one size to the next.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000,10000[,100000]] [--workdir DIR]
    .venv/bin/python benchmarks/bench_scale.py --stages phantom,ingest,phantom-synthetic,audit

The second form audits against a phantom set of another seed in place of generated records
(`phantom-synthetic`: a release of 1,000 studies at every size, so the growth is the site's),
for sizes at which generation takes hours on a CPU.

Each stage runs in a fresh child process, so its peak RSS (ru_maxrss) is its own. `train` is
`cxrsynth train` on the site's directory (streamed: images decoded on access); `steps-memory`
the loop as it was before the streaming loader (every image decoded into memory first, then
100 `train_steps` on the list). `speed` takes the same 100 steps three ways interleaved step by
step in one process (streamed, streamed with 2 DataLoader workers, decoded first; the order
turned each step, and a pause before each step so the workers' reading falls in their own run's
steps only), so the images/s compare under the same machine load. `loader` times the DataLoader alone (no model:
decoding, resizing and batching) with 0, 1 and 2 workers, in turns, on a dataset of
`--image-size` pixels: whether the workers scale the reading with the cores, which a CPU
trainer competing for the same cores cannot show. `transfer` times what the training process spends taking a batch from one
worker, sent whole (pixels in the pickle) or as a `RecordBatch` (pixels in shared tensors), in turns. The model is mopoe-tiny at 64x64 pixels (batch 32). `generate` writes a release of
1,000 records (fewer for a smaller site) from the model trained on the site; the audit compares a
synthetic set of that size with the site's training and holdout patients
(a policy with fewer bootstrap rounds and classifier steps, so the audit's cost is its reading
and nearest-neighbour search rather than its training loops).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import child, peak_rss_mb, write

STEPS = 100
RELEASE = 1000  # studies of the stand-in synthetic set the audit checks, at every site size
POLICY = {"bootstrap": 50, "fidelity_steps": 30, "selfsup_steps": 10, "skip": ["text_embedding"]}


def _config(work: Path, site: Path, out: Path, workers: int) -> Path:
    import yaml

    path = work / f"train-w{workers}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "preset": "mopoe-tiny",
                "model": {"image_size": 64},
                "data": {"path": str(site)},
                "train": {
                    "steps": STEPS,
                    "batch_size": 32,
                    "num_threads": 1,
                    "workers": workers,
                    "out": str(out),
                    "log_every": 1000,
                },
            }
        ),
        encoding="utf-8",
    )
    return path


LOADER_BATCHES = 120
SETTLE = 0.05  # seconds between the interleaved steps of `speed` (see _speeds)
LOADER_WORKERS = (0, 1, 2)


def stage(name: str, work: Path, n: int, image_size: int = 64) -> dict:
    """One stage in this (child) process; returns its figures."""
    import torch

    torch.set_num_threads(1)
    from cxrsynth.cli import main as cli

    src, site, syn = work / "source", work / "site", work / "synthetic"
    t0 = time.perf_counter()
    extra: dict = {}
    if name == "phantom":
        code = cli(
            ["data", "phantom", "--out", str(src), "--n", str(n), "--sites", "1", "--size", str(image_size), "--quiet"]
        )
    elif name == "ingest":
        code = cli(["data", "ingest", "--source", "manifest", "--path", str(src), "--out", str(site), "--quiet"])
    elif name in ("mimic-tree", "dicom-folder"):
        (_mimic_tree if name == "mimic-tree" else _dicom_folder)(src, work / name)
        code = 0
    elif name in ("ingest-mimic", "ingest-dicom"):
        kind = name.split("-")[1]
        tree = work / ("mimic-tree" if kind == "mimic" else "dicom-folder")
        out = work / f"site-{kind}"
        code = cli(
            ["data", "ingest", "--source", kind, "--path", str(tree), "--out", str(out), "--replace", "--quiet"]
        )
    elif name == "train":
        code = cli(["train", "--config", str(_config(work, site, work / "run", 0)), "--quiet"])
    elif name == "steps-memory":
        _memory_loop(work, site)
        code = 0
    elif name == "speed":
        extra["images_per_s"] = _speeds(work, site)
        code = 0
    elif name == "loader":
        extra["loader_images_per_s"] = _loader_speeds(work, site)
        code = 0
    elif name == "transfer":
        extra["transfer_ms_per_batch"] = _transfer_ms(work, site)
        code = 0
    elif name == "generate":
        # A release of RELEASE records from the model trained on the site: what grows with the site.
        code = cli(
            ["generate", "--checkpoint", str(work / "run"), "--n", str(min(n, RELEASE)), "--out", str(syn), "--quiet"]
        )
    elif name == "phantom-synthetic":
        # A stand-in synthetic set for the audit alone: phantom studies of another seed, so the
        # audit's memory and time are measured at sizes generate takes hours to reach here.
        shutil.rmtree(syn, ignore_errors=True)
        code = cli(
            [
                "data",
                "phantom",
                "--out",
                str(syn),
                "--n",
                str(min(n, RELEASE)),
                "--sites",
                "1",
                "--size",
                "64",
                "--seed",
                "1",
                "--quiet",
            ]
        )
        for extra_file in ("overview.html", "phi_headers.jsonl"):  # not part of a synthetic set
            (syn / extra_file).unlink(missing_ok=True)
    elif name == "audit":
        import yaml

        policy = work / "policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY), encoding="utf-8")
        code = cli(
            [
                "audit",
                "--synthetic",
                str(syn),
                "--train",
                str(site),
                "--holdout",
                str(site),
                "--policy",
                str(policy),
                "--out",
                str(work / "audit"),
                "--quiet",
            ]
        )
        code = 0 if code in (0, 1) else code  # 1: a check failed, which is the audit working
    else:
        raise SystemExit(f"unknown stage {name}")
    if code != 0:
        raise SystemExit(f"stage {name} exited {code}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), **extra}


def _decoded_first(cfg, site: Path) -> list:
    """The training records as the loop read them before the streaming loader: all decoded."""
    from cxrsynth.data.dataset import read_dataset
    from cxrsynth.train import apply_labeled_fraction

    records, _ = read_dataset(site)
    return apply_labeled_fraction(
        [r for r in records if r.split != "holdout"], cfg.data.labeled_fraction, cfg.train.seed
    )


def _memory_loop(work: Path, site: Path) -> None:
    """100 steps of the loop before the streaming loader (every image decoded first): its peak RSS."""
    from cxrsynth.config import load_config
    from cxrsynth.models import build_model
    from cxrsynth.train import seed_everything, train_steps

    cfg = load_config(str(_config(work, site, work / "unused", 0)))
    seed_everything(0)
    data = _decoded_first(cfg, site)
    model = build_model(cfg.model)
    model.setup(data)
    model.opts = model.make_optimizers()
    train_steps(model, data, steps=STEPS, batch_size=cfg.train.batch_size, seed=cfg.train.seed)


def _mimic_tree(src: Path, out: Path) -> None:
    """The phantom studies at `src` laid out as a MIMIC-CXR-JPG tree (JPEGs, report files, the
    metadata, CheXpert and split tables), written one study at a time."""
    import csv

    from PIL import Image

    from cxrsynth.data.records import LABELS
    from cxrsynth.data.stream import ManifestDataset

    ds, _ = ManifestDataset.open(src)
    subjects: dict[str, int] = {}
    files = out / "files"
    out.mkdir(parents=True, exist_ok=True)
    with (
        open(out / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as m,
        open(out / "mimic-cxr-2.0.0-chexpert.csv", "w", newline="") as c,
        open(out / "mimic-cxr-2.0.0-split.csv", "w", newline="") as sp,
    ):
        meta, chex, split = csv.writer(m), csv.writer(c), csv.writer(sp)
        meta.writerow(["dicom_id", "subject_id", "study_id", "ViewPosition"])
        chex.writerow(["subject_id", "study_id", *LABELS])
        split.writerow(["dicom_id", "study_id", "subject_id", "split"])
        for i in range(len(ds)):
            r = ds[i]
            subject = str(10_000_000 + subjects.setdefault(r.patient_id, len(subjects)))
            study = str(50_000_000 + i)
            d = files / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            d.mkdir(parents=True, exist_ok=True)
            (d.parent / f"s{study}.txt").write_text(
                f" FINDINGS:\n {r.findings}\n\n IMPRESSION:\n {r.impression}\n", encoding="utf-8"
            )
            for dicom_id, image, view in ((f"d{i}f", r.image, r.view), (f"d{i}l", r.lateral, "LATERAL")):
                if image is None:
                    continue
                Image.fromarray(image).save(d / f"{dicom_id}.jpg", quality=95)
                meta.writerow([dicom_id, subject, study, view])
                split.writerow([dicom_id, study, subject, "test" if r.split == "holdout" else "train"])
            chex.writerow([subject, study, *("" if r.labels[n] is None else f"{r.labels[n]:.1f}" for n in LABELS)])


def _dicom_folder(src: Path, out: Path) -> None:
    """The phantom studies at `src` as a folder of DICOM files (8-bit DX objects, the report beside
    the frontal one as `<stem>.txt`), written one study at a time."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from cxrsynth.data.stream import ManifestDataset

    ds, _ = ManifestDataset.open(src)
    for i in range(len(ds)):
        r = ds[i]
        folder = out / f"{i // 1000:03d}" / f"{i:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "frontal.txt").write_text(f"FINDINGS: {r.findings}\nIMPRESSION: {r.impression}\n")
        for stem, image, view in (("frontal", r.image, r.view), ("lateral", r.lateral, "LL")):
            if image is None:
                continue
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            d = Dataset()
            d.file_meta = meta
            d.SOPClassUID, d.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            d.StudyInstanceUID, d.Modality, d.ViewPosition = f"1.2.826.0.1.{i}", "DX", view
            d.PatientID, d.PatientName, d.AccessionNumber = r.patient_id, f"PATIENT^{i}", f"ACC{i}"
            d.Rows, d.Columns = image.shape
            d.SamplesPerPixel, d.PhotometricInterpretation = 1, "MONOCHROME2"
            d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation = 8, 8, 7, 0
            d.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
            d.save_as(folder / f"{stem}.dcm", enforce_file_format=True)


def _speeds(work: Path, site: Path) -> dict:
    """Images/s of the same 100 steps three ways, interleaved step by step (the order turned each
    step) so all see the same machine load: streamed (decoded in the training process), streamed
    with 2 DataLoader workers, and from records decoded first."""
    from cxrsynth.config import load_config
    from cxrsynth.data.stream import IndexBatchSampler, RecordsDataset, RecordView, record_loader
    from cxrsynth.models import build_model
    from cxrsynth.train import load_run_dataset, seed_everything, training_set

    cfg = load_config(str(_config(work, site, work / "unused", 0)))
    streamed = training_set(cfg, load_run_dataset(cfg))
    memory = _decoded_first(cfg, site)
    batch = cfg.train.batch_size
    runs = []
    for name, workers in (
        ("streamed", 0),
        ("streamed, 2 workers", 2),
        ("decoded first", 0),
    ):
        seed_everything(0)
        model = build_model(cfg.model)
        model.setup(memory if name == "decoded first" else RecordView(streamed))
        model.opts = model.make_optimizers()
        model.train()
        sampler = IndexBatchSampler(len(streamed), batch, cfg.train.seed, steps=STEPS + 1)
        data = RecordsDataset(memory) if name == "decoded first" else streamed
        loader = iter(record_loader(data, sampler, workers))
        model.train_step(next(loader))  # warm-up (and the workers' start)
        runs.append([name, model, loader, 0.0])
    for step in range(STEPS):
        for run in runs[step % len(runs) :] + runs[: step % len(runs)]:
            # A pause (not timed) lets the workers finish refilling what their run took last, so
            # they do not read during another run's step: their reading overlaps their own run's
            # steps only, as when it trains alone.
            time.sleep(SETTLE)
            t0 = time.perf_counter()
            run[1].train_step(next(run[2]))
            run[3] += time.perf_counter() - t0
    return {name: STEPS * batch / seconds for name, _, _, seconds in runs}


def _loader_speeds(work: Path, site: Path) -> dict:
    """Images/s the streaming DataLoader delivers with 0, 1 and 2 workers (each record's frontal
    and lateral PNGs decoded and batched), two turns each in the order 0, 1, 2, 0, 1, 2 so machine
    load drifts over all alike; the workers' start-up is left out (timing from the first batch)."""
    from cxrsynth.config import load_config
    from cxrsynth.data.stream import IndexBatchSampler, record_loader
    from cxrsynth.train import load_run_dataset, training_set

    cfg = load_config(str(_config(work, site, work / "unused", 0)))
    streamed = training_set(cfg, load_run_dataset(cfg))
    batch = cfg.train.batch_size
    seconds = dict.fromkeys(LOADER_WORKERS, 0.0)
    images = dict.fromkeys(LOADER_WORKERS, 0)
    for turn in range(2):
        for workers in LOADER_WORKERS:
            sampler = IndexBatchSampler(len(streamed), batch, turn, steps=LOADER_BATCHES + 1)
            loader = iter(record_loader(streamed, sampler, workers))
            next(loader)
            t0 = time.perf_counter()
            for b in loader:
                images[workers] += len(b)
            seconds[workers] += time.perf_counter() - t0
    return {f"{w} workers": images[w] / seconds[w] for w in LOADER_WORKERS}


class _WholeBatch(list):
    """A batch pickled whole, its records' pixels included: how batches crossed from a worker
    before `RecordBatch` sent them in shared tensors."""


def _transfer_ms(work: Path, site: Path) -> dict:
    """Milliseconds the training process spends taking a batch from one worker, a batch sent
    whole (pixels in the pickle) against a `RecordBatch` (pixels in shared tensors), the two
    loaders drawn from in turns and a pause before each draw, so the worker has the batch ready
    and the time is the transfer alone."""
    from torch.utils.data import DataLoader

    from cxrsynth.config import load_config
    from cxrsynth.data.stream import IndexBatchSampler, collate_records
    from cxrsynth.train import load_run_dataset, training_set

    cfg = load_config(str(_config(work, site, work / "unused", 0)))
    streamed = training_set(cfg, load_run_dataset(cfg))
    ways = {"pickled whole": _WholeBatch, "shared tensors": collate_records}
    loaders, seconds = {}, dict.fromkeys(ways, 0.0)
    for name, collate in ways.items():
        sampler = IndexBatchSampler(len(streamed), cfg.train.batch_size, 0, steps=LOADER_BATCHES + 1)
        loaders[name] = iter(DataLoader(streamed, batch_sampler=sampler, collate_fn=collate, num_workers=1))
        next(loaders[name])
    for _ in range(LOADER_BATCHES):
        for name, loader in loaders.items():
            time.sleep(SETTLE)
            t0 = time.perf_counter()
            next(loader)
            seconds[name] += time.perf_counter() - t0
    return {name: 1000 * s / LOADER_BATCHES for name, s in seconds.items()}


def _speed_rows(rows: list, speeds: dict, reference: str, name: str, note: str) -> None:
    """One row per way of reading (`name` and `note` take the way and the ratio to `reference`)."""
    for how, ips in speeds.items():
        rows.append(
            {
                "name": name.format(how),
                "value": round(ips, 1),
                "unit": "images/s",
                "note": note.format(ips / speeds[reference]),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)


STAGES = ("phantom", "ingest", "train", "steps-memory", "speed", "generate", "audit")
# Asked for by name (--stages): see `stage`. The source stages lay the phantom studies out as a
# MIMIC-CXR-JPG tree or a DICOM folder, and ingest them: `--stages phantom,mimic-tree,ingest-mimic`.
EXTRA_STAGES = (
    "phantom-synthetic",
    "loader",
    "transfer",
    "mimic-tree",
    "ingest-mimic",
    "dicom-folder",
    "ingest-dicom",
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="benchmarks/results/bench_scale.json")
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument(
        "--workdir", default=None, help="where the datasets go (default: a temporary folder, removed after)"
    )
    p.add_argument("--quick", action="store_true", help="1000 studies only")
    p.add_argument("--image-size", type=int, default=64, help="side of the phantom images written (the model sees 64)")
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        name, work, n, *size = args.child
        print(json.dumps(stage(name, Path(work), int(n), int(size[0]) if size else 64)))
        return 0
    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    stages = args.stages.split(",")
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows, peaks = [], {}
    try:
        for n in sizes:
            work = base / f"n{n}"
            if work.exists() and "phantom" in stages:  # a run of later stages alone reuses the folder
                shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
            for name in stages:
                r = child(__file__, name, str(work), str(n), str(args.image_size), timeout=3600)
                if "error" in r:
                    rows.append({"name": f"{name} {n}", "value": None, "unit": "MB", "note": r["error"]})
                    continue
                peaks[(name, n)] = r["peak_rss_mb"]
                note = f"{r['seconds']:.1f} s wall"
                if "images_per_s" in r:
                    _speed_rows(
                        rows,
                        r["images_per_s"],
                        "decoded first",
                        f"train images/s, {{}}, {n} studies",
                        f"{STEPS} steps interleaved; {{:.2f}}x decoded first",
                    )
                    note += " (speed process: holds both the decoded records and the streamed dataset)"
                if "loader_images_per_s" in r:
                    _speed_rows(
                        rows,
                        r["loader_images_per_s"],
                        "0 workers",
                        f"DataLoader images/s, {{}}, {n} studies of {args.image_size} px",
                        f"{LOADER_BATCHES} batches x 2 turns, no model; {{:.2f}}x no workers",
                    )
                for how, ms in r.get("transfer_ms_per_batch", {}).items():
                    rows.append(
                        {
                            "name": f"taking a batch from a worker, {how}, {n} studies of {args.image_size} px",
                            "value": round(ms, 2),
                            "unit": "ms",
                            "note": f"{LOADER_BATCHES} batches, the two ways in turns",
                        }
                    )
                rows.append(
                    {
                        "name": f"{name} peak RSS, {n} studies",
                        "value": round(r["peak_rss_mb"]),
                        "unit": "MB",
                        "seconds": round(r["seconds"], 1),
                        "note": note,
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
            shutil.rmtree(work / "source", ignore_errors=True)
        for a, b in zip(sizes, sizes[1:]):
            for name in stages:
                if (name, a) in peaks and (name, b) in peaks:
                    rows.append(
                        {
                            "name": f"{name} peak RSS growth {a} -> {b}",
                            "value": round(peaks[(name, b)] / peaks[(name, a)], 2),
                            "unit": "x",
                            "note": "same run",
                        }
                    )
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    write(args.out, "scale", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
