"""The release gate does not cry wolf: the default demo's federated, DP-trained EMIXER, trained
normally on 450 phantom studies, passes every check of the default policy and is released."""

import json

import pytest

from cxrsynth.cli import main
from server.demo import run_demo


@pytest.mark.slow
def test_default_demo_model_passes_the_default_gate(tmp_path):
    demo = run_demo(tmp_path / "demo", "emixer")
    audit = json.loads((tmp_path / "demo" / "audit" / "audit.json").read_text(encoding="utf-8"))
    failed = {name: check for name, check in audit["checks"].items() if not check["passed"]}
    assert audit["passed"], f"checks failed on an honestly trained model: {failed}"
    assert audit["checks"]["image_copies"]["copies"] == 0
    assert audit["checks"]["phi"]["findings"] == 0
    release = next(s for s in demo.stages if s.name == "release")
    assert release.value["released"]
    pub = tmp_path / "demo" / "keys" / "steward.pem.pub"
    assert main(["release", "verify", str(tmp_path / "demo" / "release"), "--public-key", str(pub)]) == 0
