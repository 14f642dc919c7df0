"""The steward's register of audits: a model whose sample failed is not released by drawing
another sample; the register's lines are signed and chained, so an edit, a removal or another
key's line is caught."""

import json
import multiprocessing

import pytest
from test_audit_support import make_key, varied_records

from cxrsynth.cli import main
from cxrsynth.data.dataset import write_dataset
from cxrsynth.errors import CheckFailed
from cxrsynth.privacy.audit import register
from cxrsynth.privacy.keys import load_private_key

POLICY = "skip: [membership]\nmax_closeness_upper: 0.95\nbootstrap: 50\n"
PHI = "Patient John Smithers, MRN 4829173, seen on 03/14/2021 by Dr. Alice Weber. Heart size is normal."


@pytest.fixture(scope="module")
def steward(tmp_path_factory):
    root = tmp_path_factory.mktemp("register")
    real = varied_records(60, 1, prefix="t") + varied_records(30, 2, split="holdout", prefix="h")
    write_dataset(root / "real", real)
    (root / "policy.yaml").write_text(POLICY, encoding="utf-8")
    (root / "tolerant.yaml").write_text(POLICY + "max_failed_audits: 1\n", encoding="utf-8")
    return root, make_key(root)


def _sample(folder, model: str, seed: int, phi: bool = False):
    """20 synthetic records of unseen patients, naming the checkpoint `model` made them; with
    `phi`, one report carries a name, an MRN and a date (the PHI scan fails the audit)."""
    records = [
        r.with_(site="synthetic", split="", provenance=f"family=ldm;checkpoint={model};seed={i}")
        for i, r in enumerate(varied_records(20, seed, prefix=f"s{seed}-", split="", rare=False))
    ]
    if phi:
        records[0] = records[0].with_(findings=PHI)
    write_dataset(folder, records)
    return folder


def _audit(steward, sample, out, policy="policy.yaml"):
    root, key = steward
    argv = ["--quiet", "audit", "--synthetic", str(sample), "--train", str(root / "real")]
    argv += ["--holdout", str(root / "real"), "--policy", str(root / policy), "--out", str(out)]
    code = main(argv + ["--key", str(key), "--register", str(out.parent / "audits.jsonl")])
    return code, json.loads((out / "audit.json").read_text(encoding="utf-8"))


def _release(steward, sample, audit_dir, out):
    root, key = steward
    argv = ["release", "--synthetic", str(sample), "--audit", str(audit_dir), "--key", str(key)]
    return main(argv + ["--register", str(audit_dir.parent / "audits.jsonl"), "--out", str(out)])


def test_a_model_whose_sample_failed_is_not_released_by_sampling_it_again(steward, tmp_path, capsys):
    code, first = _audit(steward, _sample(tmp_path / "a1", "aaaa", 11, phi=True), tmp_path / "audit-a1")
    assert code == 1 and not first["checks"]["phi"]["passed"]
    assert first["checks"]["earlier_audits"] == {
        "passed": True,
        "status": "ran",
        "subject": "model aaaa",
        "attempt": 1,
        "failed_before": 0,
        "earlier": [],
        "reasons": [],
    }
    # A fresh sample of the same model passes every check of its own, and still fails its audit.
    code, second = _audit(steward, _sample(tmp_path / "a2", "aaaa", 12), tmp_path / "audit-a2")
    failed = [n for n, c in second["checks"].items() if not c["passed"]]
    assert code == 1 and failed == ["earlier_audits"]
    reason = second["checks"]["earlier_audits"]["reasons"][0]
    assert "1 earlier audit(s) of model aaaa failed" in reason and "line 1" in reason and "phi" in reason
    capsys.readouterr()
    assert _release(steward, tmp_path / "a2", tmp_path / "audit-a2", tmp_path / "bundle-a2") == 1
    assert "earlier_audits" in capsys.readouterr().err and not (tmp_path / "bundle-a2").exists()
    # Another model's sample is not held to model aaaa's failure.
    code, other = _audit(steward, _sample(tmp_path / "b1", "bbbb", 13), tmp_path / "audit-b1")
    assert code == 0 and other["checks"]["earlier_audits"]["attempt"] == 1
    assert _release(steward, tmp_path / "b1", tmp_path / "audit-b1", tmp_path / "bundle-b1") == 0
    card = (tmp_path / "bundle-b1" / "DATASET_CARD.md").read_text(encoding="utf-8")
    assert (
        "samples of model bbbb 1 time(s) up to this release (0 found a failing check in its sample; the policy tolerates 0)"
        in card
    )
    # A steward who tolerates one failure says so in the policy, and the card shows it. The audit
    # refused only for the model's earlier failure is not counted again.
    code, third = _audit(steward, _sample(tmp_path / "a3", "aaaa", 14), tmp_path / "audit-a3", "tolerant.yaml")
    figures = third["checks"]["earlier_audits"]
    assert code == 0 and (figures["attempt"], figures["failed_before"]) == (3, 1)
    assert _release(steward, tmp_path / "a3", tmp_path / "audit-a3", tmp_path / "bundle-a3") == 0
    card = (tmp_path / "bundle-a3" / "DATASET_CARD.md").read_text(encoding="utf-8")
    assert (
        "model aaaa 3 time(s) up to this release (1 found a failing check in its sample; the policy tolerates 1)"
        in card
    )


def test_a_later_failure_withdraws_an_earlier_pass_and_a_cut_register_holds_no_audit(steward, tmp_path, capsys):
    code, _ = _audit(steward, _sample(tmp_path / "c1", "cccc", 21), tmp_path / "audit-c1")
    assert code == 0
    log = tmp_path / "audits.jsonl"
    one_line = log.read_bytes()
    code, _ = _audit(steward, _sample(tmp_path / "c2", "cccc", 22, phi=True), tmp_path / "audit-c2")
    assert code == 1
    capsys.readouterr()
    assert _release(steward, tmp_path / "c1", tmp_path / "audit-c1", tmp_path / "bundle") == 1
    err = capsys.readouterr().err
    assert "1 audit(s) of model cccc failed" in err and "line 2" in err and "max_failed_audits 0" in err
    # The failure cut from the register: the audit it cites is gone too, so nothing is released.
    log.write_bytes(b"")
    assert _release(steward, tmp_path / "c1", tmp_path / "audit-c1", tmp_path / "bundle") == 1
    assert "holds no passing audit" in capsys.readouterr().err
    log.write_bytes(one_line)
    assert _release(steward, tmp_path / "c1", tmp_path / "audit-c1", tmp_path / "bundle") == 0


def test_the_steward_lists_the_register_and_a_broken_line_exits_1(steward, tmp_path, capsys):
    root, key = steward
    assert _audit(steward, _sample(tmp_path / "e1", "eeee", 41, phi=True), tmp_path / "audit-e1")[0] == 1
    assert _audit(steward, _sample(tmp_path / "e2", "eeee", 42), tmp_path / "audit-e2")[0] == 1
    log = tmp_path / "audits.jsonl"
    capsys.readouterr()
    listing = ["release", "audits", "--public-key", str(root / "steward.pem.pub"), "--register", str(log)]
    assert main(listing) == 0
    out = capsys.readouterr().out.splitlines()
    assert "2 audit(s), every line signed by the key and in sequence" in out[0]
    assert out[1].split()[-2:] == ["FAILED", "phi"] and out[2].split()[-2:] == ["FAILED", "earlier_audits"]
    assert out[-1] == "model eeee: 2 audit(s), 1 found a failing check in its sample"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[1])
    assert main(["release", "audits", "--key", str(key), "--register", str(log)]) == 1
    assert "line 1: it is not a register's first line" in capsys.readouterr().err


def test_an_unsealed_audit_reads_and_writes_no_register(steward, tmp_path):
    root, _ = steward
    sample = _sample(tmp_path / "d1", "dddd", 31)
    argv = ["--quiet", "audit", "--synthetic", str(sample), "--train", str(root / "real")]
    assert (
        main(
            argv
            + ["--holdout", str(root / "real"), "--policy", str(root / "policy.yaml"), "--out", str(tmp_path / "a")]
        )
        == 0
    )
    check = json.loads((tmp_path / "a" / "audit.json").read_text(encoding="utf-8"))["checks"]["earlier_audits"]
    assert check["status"] == "not_registered" and check["passed"]
    assert not list(tmp_path.glob("*.jsonl")) and not list(root.glob("*.jsonl"))


def test_a_register_that_cannot_be_written_stops_the_audit_before_it_runs(steward, tmp_path, capsys):
    root, key = steward
    (tmp_path / "not-a-folder").write_text("", encoding="utf-8")  # unwritable whoever runs the test
    sample = _sample(tmp_path / "f1", "ffff", 51)
    argv = ["--quiet", "audit", "--synthetic", str(sample), "--train", str(root / "real")]
    argv += ["--holdout", str(root / "real"), "--out", str(tmp_path / "a"), "--key", str(key)]
    assert main(argv + ["--register", str(tmp_path / "not-a-folder" / "audits.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "audits.jsonl: the steward's register of audits cannot be" in err and "--register FILE" in err
    assert not (tmp_path / "a").exists()


def _entry(model: str, passed: bool) -> dict:
    return {
        "inputs": {"checkpoint_hash": model, "synthetic_files": {}},
        "passed": passed,
        "checks": {"phi": {"passed": passed}},
        "sites": [],
    }


def _append_many(path, key_path, model, n, start):
    key = load_private_key(key_path)
    start.wait()  # both writers ready: their appends interleave
    for i in range(n):
        register.append(path, key, _entry(model, i % 2 == 0), f"{model}{i:060d}")


def test_the_register_catches_an_edited_removed_or_foreign_line_and_keeps_its_chain_under_two_writers(
    steward, tmp_path
):
    root, key_path = steward
    path, key = tmp_path / "audits.jsonl", load_private_key(key_path)
    # Two processes sealing at once: the lock keeps one chain of 60 lines.
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    writers = [ctx.Process(target=_append_many, args=(path, key_path, m, 30, start)) for m in ("ee", "ff")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    entries = register.read(path, key.public_key())
    assert [e["n"] for e in entries] == list(range(1, 61))
    assert sorted(e["subject"] for e in entries) == ["model ee"] * 30 + ["model ff"] * 30
    assert register.earlier(entries, "model ee")["failed_before"] == 15
    lines = path.read_bytes().splitlines(keepends=True)

    edited = json.loads(lines[2])
    edited["passed"] = not edited["passed"]
    path.write_bytes(b"".join(lines[:2] + [json.dumps(edited, sort_keys=True).encode() + b"\n"] + lines[3:]))
    with pytest.raises(CheckFailed, match="line 3: its signature does not verify"):
        register.read(path, key.public_key())
    path.write_bytes(b"".join(lines[:5] + lines[6:]))
    with pytest.raises(CheckFailed, match="line 6: it does not follow line 5"):
        register.read(path, key.public_key())
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])
    with pytest.raises(CheckFailed, match="line 60: not a register entry"):
        register.read(path, key.public_key())
    other = load_private_key(make_key(tmp_path, "other.pem"))
    path.write_bytes(b"".join(lines))
    with pytest.raises(CheckFailed, match="line 1: signed by key .* not the steward's key"):
        register.read(path, other.public_key())
    # Nothing is appended to a broken register.
    path.write_bytes(b"".join(lines[:5] + lines[6:]))
    with pytest.raises(CheckFailed, match="does not follow"):
        register.append(path, key, _entry("ee", True), "0" * 64)
    assert path.read_bytes() == b"".join(lines[:5] + lines[6:])
