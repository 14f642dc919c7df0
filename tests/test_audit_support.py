"""Shared helpers of the audit and release tests (no tests here).

`varied_records` draws chest-like images whose anatomy varies by patient (lung fields, heart,
ribs, low-frequency texture), so that distinct patients are distinct images; a copy of one
patient's image is then a real outlier, as it is in clinical data.
"""

from __future__ import annotations

import numpy as np

from cxrsynth.data.records import Record, empty_labels

COMMON = [
    "Heart size is normal.",
    "The lungs are clear.",
    "No pleural effusion or pneumothorax.",
    "There is mild cardiomegaly.",
    "Small left pleural effusion.",
    "No focal consolidation.",
    "Mediastinal contours are unremarkable.",
    "Degenerative changes of the thoracic spine.",
    "Bibasilar atelectasis.",
    "No acute cardiopulmonary process.",
]
ORGANS = ["left upper lobe", "right middle lobe", "lingula", "right apex", "left base"]


def patient_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 0.55 + rng.normal(0, 0.05))
    for side in (-1, 1):
        cx, cy = 0.5 + side * rng.uniform(0.15, 0.22), rng.uniform(0.42, 0.52)
        rx, ry = rng.uniform(0.11, 0.17), rng.uniform(0.25, 0.34)
        img -= 0.35 * np.exp(-((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) ** 2))
    hx, hy, hr = rng.uniform(0.5, 0.6), rng.uniform(0.6, 0.7), rng.uniform(0.09, 0.16)
    img += 0.3 * np.exp(-((((xx - hx) ** 2 + (yy - hy) ** 2) / hr**2) ** 2))
    img += 0.04 * np.sin(2 * np.pi * (yy * rng.uniform(6, 9) + rng.uniform(0, 1)))
    k = 6
    coarse = rng.normal(0, 1, (k, k))
    from PIL import Image

    tex = np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
    img += 0.06 * tex
    img += rng.normal(0, 0.015, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def report(rng: np.random.Generator, rare: bool) -> tuple[str, str]:
    sents = list(rng.choice(COMMON, size=3, replace=False))
    if rare:
        # A sentence only this patient has: what a memorizing model would leak.
        sents.append(
            f"Compared with the study of {rng.integers(1, 28)} {rng.choice(['March', 'June', 'October'])}, a {rng.integers(3, 19)} mm nodule in the {rng.choice(ORGANS)} has grown by {rng.integers(1, 6)} mm."
        )
    return " ".join(sents[:-1]), sents[-1]


def write_audit_inputs(root, n_train: int = 150, n_holdout: int = 60, n_synthetic: int = 200) -> tuple:
    """A real dataset (train + holdout, one site) and an honest synthetic set of unseen patients."""
    from cxrsynth.data.dataset import write_dataset

    real = varied_records(n_train, 1, prefix="t") + varied_records(n_holdout, 2, split="holdout", prefix="h")
    synthetic = [
        r.with_(site="synthetic", split="") for r in varied_records(n_synthetic, 3, prefix="syn", split="", rare=False)
    ]
    write_dataset(root / "real", real)
    write_dataset(root / "syn", synthetic)
    return root / "real", root / "syn"


def varied_records(
    n: int, seed: int, split: str = "train", site: str = "site0", prefix: str = "r", rare: bool = True
) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        findings, impression = report(rng, rare)
        out.append(
            Record(
                record_id=f"{prefix}{i:05d}",
                patient_id=f"{prefix}p{i:05d}",
                study_id=f"{prefix}s{i:05d}",
                site=site,
                split=split,
                findings=findings,
                impression=impression,
                labels=empty_labels(),
                image=patient_image(rng),
            )
        )
    return out


class TinyGenerator:
    """A tiny linear-autoencoder image generator with a report sampler, for the gate tests.

    `sampling='kde'` with a small bandwidth is a model built to memorize: it decodes training
    codes plus a little noise and copies the matching training report (what an over-trained
    generator does). `sampling='gaussian'` decodes codes drawn from a Gaussian fitted to the
    training codes and composes reports from sentences many training reports share.
    `member_scores` is minus the reconstruction error, the loss-based membership score.
    """

    def __init__(self, latent: int, sampling: str, bandwidth: float = 0.02, side: int = 32, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        self.side, self.sampling, self.bandwidth, self.seed = side, sampling, bandwidth, seed
        d = side * side
        self.enc = torch.nn.Linear(d, latent)
        self.dec = torch.nn.Linear(latent, d)

    def _x(self, records):
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(np.stack([r.image for r in records]).astype(np.float32) / 255.0)[:, None]
        return F.interpolate(x, size=(self.side, self.side), mode="area").flatten(1)

    def fit(self, records, steps: int, lr: float = 3e-3):
        import torch

        self.train_records = list(records)
        x = self._x(records)
        opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=lr)
        for _ in range(steps):
            loss = ((self.dec(self.enc(x)) - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            self.codes = self.enc(x)
            # Per-pixel spread of what the low-rank model does not explain: sampled anew per image,
            # so outputs have the texture of real images without being any one of them.
            self.residual_std = (x - self.dec(self.codes)).std(0)
        counts: dict[str, int] = {}
        from cxrsynth.data.text import split_sentences

        for r in records:
            for s in set(split_sentences(r.report.replace("FINDINGS: ", "").replace("IMPRESSION: ", ""))):
                counts[s] = counts.get(s, 0) + 1
        self.common = sorted(s for s, c in counts.items() if c >= 5)
        return self

    def member_scores(self, records) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = self._x(records)
            return -((self.dec(self.enc(x)) - x) ** 2).mean(1).numpy()

    def generate(self, n: int) -> list[Record]:
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(self.seed + 1)
        rng = np.random.default_rng(self.seed + 1)
        src = torch.randint(0, len(self.codes), (n,), generator=g)
        if self.sampling == "kde":
            z = self.codes[src] + self.bandwidth * self.codes.std(0) * torch.randn(n, self.codes.shape[1], generator=g)
        else:
            mu, cov = self.codes.mean(0), torch.cov(self.codes.T) + 1e-5 * torch.eye(self.codes.shape[1])
            z = torch.distributions.MultivariateNormal(mu, cov).sample((n,))
        with torch.no_grad():
            x = self.dec(z)
            if self.sampling != "kde":
                x = x + self.residual_std * torch.randn(x.shape, generator=g)
            x = x.clamp(0, 1).reshape(n, 1, self.side, self.side)
            imgs = (F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)[:, 0].numpy() * 255).astype(
                np.uint8
            )
        out = []
        for i in range(n):
            if self.sampling == "kde":
                s = self.train_records[int(src[i])]
                findings, impression = s.findings, s.impression
            else:
                sents = list(rng.choice(self.common, size=3, replace=False))
                findings, impression = " ".join(sents[:2]), sents[2]
            out.append(
                Record(
                    f"syn{i:05d}",
                    f"syn{i:05d}",
                    f"syn{i:05d}",
                    site="synthetic",
                    findings=findings,
                    impression=impression,
                    image=imgs[i],
                )
            )
        return out


def make_key(root, name: str = "steward.pem"):
    """A steward key made as a user makes one (`cxrsynth release key`), with its .pub beside it."""
    from cxrsynth.cli import main

    path = root / name
    assert main(["--quiet", "release", "key", "--out", str(path)]) == 0
    return path
