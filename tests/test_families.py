"""Model families are plug-ins: every registered family meets one contract, and a family kept in a
folder outside the package joins the registry, trains federated and generates like the built-in ones."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from family_contract import check_family

from cxrsynth.models import registry

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_family_meets_the_interface(name, tmp_path):
    check_family(name, tmp_path)


def test_the_built_in_families_declare_themselves():
    assert {"emixer", "ldm", "mopoe"} <= set(registry.names())
    assert registry.get("mopoe").probe is not None and registry.get("emixer").probe is None
    with pytest.raises(registry.FamilyError, match="unknown model family 'vqgan'.*CXRSYNTH_FAMILIES"):
        registry.get("vqgan")


# A family of its own, in one folder: a linear decoder from the label vector to the image.
DUMMY = {
    "__init__.py": """
        from cxrsynth.models.registry import Family

        from .config import PixelsConfig

        FAMILY = Family.in_folder(__name__, name="pixels", config=PixelsConfig, writes_reports=lambda config: False)
    """,
    "config.py": """
        from typing import Literal

        from pydantic import BaseModel, ConfigDict, Field


        class PixelsConfig(BaseModel):
            model_config = ConfigDict(extra="forbid", frozen=True)

            family: Literal["pixels"] = "pixels"
            preset: Literal["tiny", "custom"] = "custom"
            image_size: int = Field(16, ge=8)
            lr: float = 0.01
    """,
    "model.py": """
        import numpy as np
        import torch
        from torch import nn

        from cxrsynth.data.records import COND_DIM, Record, condition_vector, empty_labels
        from cxrsynth.data.transforms import images_to_tensor, tensor_to_images
        from cxrsynth.models.base import GenerativeModel


        class Model(GenerativeModel):
            family = "pixels"

            def __init__(self, config):
                super().__init__(config)
                self.nets["decoder"] = nn.Linear(COND_DIM, config.image_size**2)

            def reads_real_data(self, name):
                return True

            def make_optimizers(self):
                return {"decoder": torch.optim.SGD(self.nets["decoder"].parameters(), lr=self.config.lr)}

            def _errors(self, records):
                size = self.config.image_size
                cond = torch.as_tensor(np.stack([condition_vector(r.labels) for r in records]))
                target = images_to_tensor([r.image for r in records], size).flatten(1)
                return ((self.nets["decoder"](cond) - target) ** 2).mean(1)

            def train_step(self, records):
                if not records:
                    self.noise_only_step(["decoder"])
                    return {}
                opt = self.opts["decoder"]
                opt.zero_grad(set_to_none=True)
                loss = self._errors(records).mean()
                loss.backward()
                opt.step()
                return {"mse": loss.item()}

            def generate(self, n, conditions=None, seed=0):
                labels = list(conditions) if conditions is not None else [empty_labels() for _ in range(n)]
                cond = torch.as_tensor(np.stack([condition_vector(lab) for lab in labels]))
                with torch.no_grad():
                    out = torch.tanh(self.nets["decoder"](cond)).view(n, 1, self.config.image_size, self.config.image_size)
                return [Record(record_id=f"px-{i}", patient_id="", study_id="", labels=dict(lab), image=img)
                        for i, (lab, img) in enumerate(zip(labels, tensor_to_images(out)))]

            @torch.no_grad()
            def member_scores(self, records):
                return -self._errors(list(records)).numpy()
    """,
    "presets/tiny.yaml": """
        name: pixels-tiny
        model:
          family: pixels
          preset: tiny
          image_size: 16
        data:
          phantom: {n: 60, sites: 2, image_size: 16, lateral: false}
        train: {steps: 4, batch_size: 8, num_threads: 1}
        federation: {sites: 2, min_sites: 2, rounds: 2, local_steps: 2}
    """,
}


@pytest.fixture
def pixels_family(tmp_path, monkeypatch):
    folder = tmp_path / "plugins" / "pixels"
    for rel, text in DUMMY.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    monkeypatch.setenv(registry.ENV_VAR, str(folder))
    yield folder
    registry._registered.pop("pixels", None)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cxrsynth", "--quiet", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_family_in_a_folder_of_its_own_is_registered_and_meets_the_contract(pixels_family, tmp_path):
    family = registry.load_from(str(pixels_family))
    assert family.name == "pixels" and "pixels" in registry.names()
    assert "pixels-tiny" in family.preset_files()
    check_family("pixels", tmp_path)


@pytest.mark.long
def test_a_family_in_a_folder_of_its_own_trains_federated_and_generates(pixels_family, tmp_path):
    assert "pixels" in _cli("demo", "--help", cwd=tmp_path).stdout
    run = _cli("fl", "simulate", "--config", "pixels-tiny", "--out", str(tmp_path / "fl"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    made = _cli(
        "generate", "--checkpoint", str(tmp_path / "fl"), "--n", "5", "--out", str(tmp_path / "syn"), cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr[-3000:]
    manifest = (tmp_path / "syn" / "manifest.csv").read_text(encoding="utf-8")
    assert manifest.count("family=pixels") == 5


def test_a_family_that_cannot_be_found_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "nowhere"))
    run = _cli("--version", cwd=tmp_path)
    assert run.returncode == 2 and "nowhere" in run.stderr and "no __init__.py" in run.stderr
