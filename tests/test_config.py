import pytest

from cxrsynth.config import load_config, preset_names
from cxrsynth.errors import ConfigError


def test_every_preset_loads():
    names = preset_names()
    assert {"emixer-tiny", "emixer-paper", "ldm-tiny", "ldm-paper", "mopoe-tiny", "mopoe-paper"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.model.family == name.split("-")[0]


def test_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("preset: emixer-tiny\ntrain:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "train.stepz" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_and_range(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("preset: mopoe-tiny\ntrain:\n  steps: -1\n  batch_size: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "train.steps" in msg and "greater than or equal to 1" in msg
    assert "train.batch_size" in msg and "'many'" in msg


def test_unknown_family(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("model:\n  family: vqgan\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "model" in str(e.value) and "vqgan" in str(e.value)


def test_bad_yaml_names_line(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("model:\n  family: [emixer\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "line" in str(e.value)


def test_preset_override(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("preset: ldm-tiny\ntrain:\n  steps: 7\n")
    cfg = load_config(p)
    assert cfg.train.steps == 7 and cfg.model.family == "ldm"
