"""Does the LDM follow its prompt? A short CPU training on phantom data, then a classifier trained on
real phantom images judges images generated from prompts naming a finding against prompts negating it.

Slow (minutes): `pytest -m slow tests/test_ldm_quality.py -s` prints the measured rates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrsynth.checkpoint import load_checkpoint
from cxrsynth.config import load_config
from cxrsynth.data.phantom import make_phantom
from cxrsynth.models.ldm.prompts import prompt_from_labels
from cxrsynth.progress import Progress
from cxrsynth.train import train

FINDINGS = ("Cardiomegaly", "Pleural Effusion")
N_SAMPLES = 64


def finding_classifiers(size: int) -> dict:
    """Per finding, a logistic regression on the pixels of real phantom images (held-out accuracy too)."""
    from sklearn.linear_model import LogisticRegression

    real = make_phantom(800, sites=3, seed=123, image_size=size, lateral=False)
    x = np.stack([r.image.reshape(-1) / 255.0 for r in real])
    out = {}
    for name in FINDINGS:
        y = np.array([r.labels[name] == 1 for r in real])
        clf = LogisticRegression(max_iter=3000, C=0.1).fit(x[:600], y[:600])
        out[name] = (clf, clf.score(x[600:], y[600:]))
    return out


def positive_rates(model, clf, name: str, seed: int) -> tuple[float, float, dict]:
    """Share of images classified positive for prompts naming, then negating, the finding."""
    rates, shown = [], {}
    for value in (1, 0):
        prompt = prompt_from_labels({name: value})
        images = model.sample([prompt] * N_SAMPLES, seed=seed)
        rates.append(float(clf.predict(np.stack([im.reshape(-1) / 255.0 for im in images])).mean()))
        shown[prompt] = images[:8]
    return rates[0], rates[1], shown


def write_page(path, rows: list[tuple[str, float, float, float, dict]]) -> None:
    """A page: the measured rates and, per prompt, the first generated images."""
    from cxrsynth import pages

    header = ["finding", "classifier accuracy (real)", "positive, prompt names it", "positive, prompt negates it"]
    grids = [(prompt, pages.grid_uri(list(images))) for *_, shown in rows for prompt, images in shown.items()]
    pages.write(
        path,
        "gallery.html",
        title="LDM prompt following",
        header=header,
        rows=[(n, a, p, q) for n, a, p, q, _ in rows],
        grids=grids,
    )


@pytest.mark.slow
def test_images_follow_prompts_after_short_cpu_training(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config("ldm-tiny", {"train": {"out": str(tmp_path / "ck")}})
    train(cfg, progress=Progress())
    model, _, _ = load_checkpoint(tmp_path / "ck")
    model.eval()
    rows = []
    for name, (clf, acc) in finding_classifiers(cfg.model.image_size).items():
        named, negated, shown = positive_rates(model, clf, name, seed=7)
        print(
            f"{name}: classifier held-out accuracy {acc:.3f}; classified positive: named {named:.3f}, negated {negated:.3f}"
        )
        rows.append((name, acc, named, negated, shown))
    write_page(tmp_path / "prompt_following.html", rows)
    print(f"page: {tmp_path / 'prompt_following.html'}")
    for name, acc, named, negated, _ in rows:
        assert acc > 0.85
        assert named > negated + 0.15, name
