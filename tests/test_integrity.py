"""Issue 19: every file that ships is audited, outputs are written whole, the gate trusts only what
it recomputes or what the steward sealed, keys are made on purpose and pinned, patients stay on
one side of a split, and each bad input of the issue is an exit 2 naming the file, row or key."""

import csv
import json
import os
import shutil
import stat

import numpy as np
import pytest
from PIL import Image
from test_audit_support import make_key, write_audit_inputs

from cxrsynth.cli import main
from cxrsynth.config import AuditPolicy
from cxrsynth.data.dataset import read_dataset, write_dataset
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.records import Record
from cxrsynth.data.split import split_by_patient
from cxrsynth.errors import InputError

RELAXED = "skip: [membership, phi]\nmax_closeness_upper: 0.95\nbootstrap: 30\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny MoPoE checkpoint (a few steps: these tests need its files, not its quality)."""
    root = tmp_path_factory.mktemp("ckpt")
    (root / "run.yaml").write_text(
        "preset: mopoe-tiny\nmodel: {image_size: 16, latent_dim: 8, channels: 8, text_length: 64, text_channels: 16, embed_dim: 8, vocab_min_count: 2}\n"
        "data: {phantom: {n: 60, image_size: 32}}\ntrain: {steps: 2, batch_size: 8}\n",
        encoding="utf-8",
    )
    assert main(["--quiet", "train", "--config", str(root / "run.yaml"), "--out", str(root / "ckpt")]) == 0
    return root / "ckpt"


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A real, sealed, passing audit of an honest synthetic set, and the steward key that sealed it."""
    root = tmp_path_factory.mktemp("audited")
    real, syn = write_audit_inputs(root, n_train=60, n_holdout=30, n_synthetic=20)
    (root / "policy.yaml").write_text(RELAXED, encoding="utf-8")
    key = make_key(root)
    args = [
        "--quiet",
        "audit",
        "--synthetic",
        str(syn),
        "--train",
        str(real),
        "--holdout",
        str(real),
        "--policy",
        str(root / "policy.yaml"),
        "--out",
        str(root / "audit"),
        "--key",
        str(key),
    ]
    assert main(args) == 0
    return root, syn, root / "audit", key


def _fresh(audited, tmp_path):
    root, syn, audit, key = audited
    shutil.copytree(syn, tmp_path / "syn")
    shutil.copytree(audit, tmp_path / "audit")
    return tmp_path / "syn", tmp_path / "audit", key


def _release(syn, audit, key, out, *extra):
    return main(
        ["release", "--synthetic", str(syn), "--audit", str(audit), "--key", str(key), "--out", str(out), *extra]
    )


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ---- 1. every file that ships is audited ----------------------------------------------------------
def test_audit_refuses_a_synthetic_folder_with_files_its_manifest_does_not_list(tmp_path, capsys):
    real, syn = write_audit_inputs(tmp_path, n_train=40, n_holdout=25, n_synthetic=5)
    shutil.copy(next((real / "images").iterdir()), syn / "images" / "real-training-image.png")
    (syn / "phi_headers.jsonl").write_text(
        '{"id": "syn00001", "meta": {"PatientName": "DOE^JANE"}}\n', encoding="utf-8"
    )
    (syn / "note.txt").write_text("Jane Doe, MRN 1234567\n", encoding="utf-8")
    os.mkfifo(syn / "pipe")
    (syn / "empty").mkdir()
    args = [
        "--quiet",
        "audit",
        "--synthetic",
        str(syn),
        "--train",
        str(real),
        "--holdout",
        str(real),
        "--out",
        str(tmp_path / "audit"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    for name in (
        "images/real-training-image.png",
        "phi_headers.jsonl",
        "note.txt",
        "pipe (not a regular file)",
        "empty/ (an empty folder)",
    ):
        assert name in err, name
    assert not (tmp_path / "audit").exists()


def test_synthetic_laterals_are_checked_for_copies_locally_and_through_the_query(tmp_path):
    from cxrsynth.privacy.audit.protocol import make_query, read_query
    from cxrsynth.privacy.audit.run import audit_records

    real = split_by_patient(make_phantom(160, sites=1, seed=0, image_size=32, lateral=True), 0.35, 0)
    train = [r for r in real if r.split == "train"]
    holdout = [r for r in real if r.split == "holdout"]
    synthetic = [
        r.with_(record_id=f"g{i:03d}", patient_id=f"g{i:03d}", site="synthetic", split="")
        for i, r in enumerate(make_phantom(40, sites=1, seed=9, image_size=32, lateral=True))
    ]
    # Ten laterals replaced by training images: eight training laterals, two training frontals.
    donors = [r for r in train if r.lateral is not None]
    planted = {synthetic[i].record_id: (donors[3 * i].lateral if i < 8 else donors[3 * i].image) for i in range(10)}
    synthetic = [r.with_(lateral=planted.get(r.record_id, r.lateral)) for r in synthetic]
    policy = AuditPolicy(
        bootstrap=30,
        skip=("phi", "membership", "label_fidelity", "report_labels", "text_rare_ngrams", "text_near_duplicates"),
        max_closeness_upper=0.95,
    )
    audit, pairs = audit_records(synthetic, train, holdout, policy)
    copies = audit["checks"]["image_copies"]
    assert not copies["passed"] and copies["lateral_copies"] == 10
    assert sorted(audit["flagged"]["images"]) == sorted(planted)
    assert {(p.synthetic_view, p.train_view) for p, _, _ in pairs} == {("lateral", "lateral"), ("lateral", "frontal")}
    # The federated query carries the laterals (and they are part of the pinned hash).
    back = read_query(make_query(synthetic, policy)).synthetic
    assert all(np.array_equal(a.lateral, b.lateral) for a, b in zip(synthetic, back))


# ---- 2. outputs are written whole ---------------------------------------------------------------
def test_generate_refuses_a_non_empty_out_and_replaces_it_whole_when_told(checkpoint, tmp_path, capsys):
    real = tmp_path / "real"
    write_dataset(real, make_phantom(20, sites=1, seed=1, image_size=32))
    before = {p: (real / p).read_bytes() for p in _files(real)}
    gen = ["--quiet", "generate", "--checkpoint", str(checkpoint)]
    assert main(gen + ["--n", "3", "--out", str(real)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert {p: (real / p).read_bytes() for p in _files(real)} == before  # the real rows are untouched
    out = tmp_path / "syn"
    assert main(gen + ["--n", "6", "--out", str(out)]) == 0
    assert main(gen + ["--n", "2", "--out", str(out)]) == 2
    assert len(read_dataset(out)[0]) == 6
    assert main(gen + ["--n", "2", "--out", str(out), "--replace"]) == 0
    recs, _ = read_dataset(out)
    assert len(recs) == 2
    listed = {"manifest.csv"} | {f"images/{p.name}" for p in (out / "images").iterdir()}
    assert set(_files(out)) == listed and len(listed) == 1 + 2 * 2  # frontal and lateral of each, nothing older
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name or ".old" in p.name]


def test_a_failed_write_leaves_the_old_folder_as_it_was(tmp_path):
    from cxrsynth.output import fresh_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with fresh_dir(out, replace=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("stopped half way")
    assert _files(out) == ["keep.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_phantom_and_ingest_refuse_a_non_empty_out_unless_told(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.docx").write_text("mine")
    ph = ["--quiet", "data", "phantom", "--n", "8", "--size", "32"]
    assert main(ph + ["--out", str(other)]) == 2 and "--replace" in capsys.readouterr().err
    ing = ["--quiet", "data", "ingest", "--source", "manifest", "--path", str(tmp_path / "ph")]
    assert main(ph + ["--out", str(tmp_path / "ph")]) == 0
    assert main(ing + ["--out", str(other)]) == 2
    assert _files(other) == ["thesis.docx"]
    assert main(ing + ["--out", str(other), "--replace"]) == 0
    assert "thesis.docx" not in _files(other) and len(read_dataset(other)[0]) == 8
    assert main(ph + ["--out", str(tmp_path / "ph"), "--replace", "--seed", "3"]) == 0


def test_a_failed_strict_ingest_leaves_no_folder_and_no_secret(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "img" / "a.png")
    (tmp_path / "site.csv").write_text(
        'image_path,report\nimg/a.png,"No effusion."\nimg/missing.png,"x"\n', encoding="utf-8"
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "--quiet",
                "data",
                "ingest",
                "--source",
                "manifest",
                "--path",
                str(tmp_path / "site.csv"),
                "--out",
                str(out),
                "--strict",
            ]
        )
        == 2
    )
    assert not out.exists()


def test_phi_headers_are_written_for_the_site_account_only(tmp_path):
    assert main(["--quiet", "data", "phantom", "--n", "4", "--size", "32", "--out", str(tmp_path / "ph")]) == 0
    assert stat.S_IMODE((tmp_path / "ph" / "phi_headers.jsonl").stat().st_mode) == 0o600


# ---- 3. the gate recomputes, the audit is sealed, keys are made on purpose and pinned -------------
def test_keys_are_made_on_purpose_never_overwritten_and_may_be_encrypted(tmp_path, capsys, monkeypatch):
    key = tmp_path / "k.pem"
    assert main(["release", "key", "--out", str(key)]) == 0
    fp = capsys.readouterr().out.split("fingerprint ")[1].strip()
    assert len(fp) == 64 and stat.S_IMODE(key.stat().st_mode) == 0o600 and (tmp_path / "k.pem.pub").is_file()
    assert main(["release", "key", "--out", str(key)]) == 2 and "never overwritten" in capsys.readouterr().err
    monkeypatch.setenv("STEWARD_PASS", "correct horse")
    enc = tmp_path / "enc.pem"
    assert main(["--quiet", "release", "key", "--out", str(enc), "--passphrase-env", "STEWARD_PASS"]) == 0
    assert b"ENCRYPTED PRIVATE KEY" in enc.read_bytes()
    from cxrsynth.privacy.keys import load_private_key

    with pytest.raises(InputError, match="encrypted; give its passphrase"):
        load_private_key(enc)
    with pytest.raises(InputError, match="passphrase does not decrypt"):
        load_private_key(enc, b"wrong")
    assert load_private_key(enc, b"correct horse") is not None


def test_release_makes_no_key_and_needs_the_key_that_sealed_the_audit(audited, tmp_path, capsys):
    syn, audit, key = _fresh(audited, tmp_path)
    missing = tmp_path / "typo.pem"
    assert _release(syn, audit, missing, tmp_path / "b") == 2
    assert "never made implicitly" in capsys.readouterr().err and not missing.exists()
    assert main(["release", "--synthetic", str(syn), "--audit", str(audit), "--out", str(tmp_path / "b")]) == 2
    other = make_key(tmp_path, "other.pem")
    capsys.readouterr()
    assert _release(syn, audit, other, tmp_path / "b") == 1
    assert "sealed by key" in capsys.readouterr().err
    (audit / "audit.sig").unlink()
    assert _release(syn, audit, key, tmp_path / "b") == 1
    assert "holds no audit.sig" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob("*.partial"))


def test_an_encrypted_key_seals_and_signs_with_its_passphrase_from_a_file(tmp_path, capsys):
    real, syn = write_audit_inputs(tmp_path, n_train=60, n_holdout=30, n_synthetic=20)
    (tmp_path / "policy.yaml").write_text(RELAXED, encoding="utf-8")
    (tmp_path / "pass.txt").write_text("s3cret phrase\n", encoding="utf-8")
    key = tmp_path / "enc.pem"
    phrase = ["--passphrase-file", str(tmp_path / "pass.txt")]
    assert main(["--quiet", "release", "key", "--out", str(key), *phrase]) == 0
    audit = [
        "--quiet",
        "audit",
        "--synthetic",
        str(syn),
        "--train",
        str(real),
        "--holdout",
        str(real),
        "--policy",
        str(tmp_path / "policy.yaml"),
        "--out",
        str(tmp_path / "a"),
        "--key",
        str(key),
    ]
    assert main(audit) == 2 and "encrypted" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(audit + phrase) == 0
    assert _release(syn, tmp_path / "a", key, tmp_path / "bundle", *phrase) == 0


def test_bundle_carries_the_fingerprint_and_verify_pins_it(audited, tmp_path, capsys):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cxrsynth.privacy.keys import fingerprint, load_private_key, public_pem

    syn, audit, key = _fresh(audited, tmp_path)
    bundle = tmp_path / "bundle"
    assert _release(syn, audit, key, bundle) == 0
    fp = fingerprint(load_private_key(key))
    assert json.loads((bundle / "MANIFEST.json").read_text())["signer"]["fingerprint"] == fp
    assert fp in (bundle / "DATASET_CARD.md").read_text()
    assert main(["release", "verify", str(bundle), "--fingerprint", fp.upper()]) == 0
    assert main(["release", "verify", str(bundle), "--fingerprint", fp, "--public-key", str(key) + ".pub"]) == 0
    assert main(["release", "verify", str(bundle), "--fingerprint", "0" * 64]) == 1
    assert main(["release", "verify", str(bundle)]) == 2 and "--fingerprint" in capsys.readouterr().err
    # Someone re-signs an edited bundle with their own key and ships their public key in it: it
    # verifies against that key, and fails against the pinned fingerprint.
    (bundle / "data" / "manifest.csv").write_bytes(
        (bundle / "data" / "manifest.csv").read_bytes().replace(b"syn00001", b"syn99999")
    )
    mallory = Ed25519PrivateKey.generate()
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    from cxrsynth.privacy.release import sha256_file

    manifest["files"]["data/manifest.csv"] = sha256_file(bundle / "data" / "manifest.csv")
    (bundle / "SIGNER.pub").write_bytes(public_pem(mallory))
    manifest["files"]["SIGNER.pub"] = sha256_file(bundle / "SIGNER.pub")
    manifest["signer"]["fingerprint"] = fingerprint(mallory)
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (bundle / "MANIFEST.json").write_bytes(body)
    (bundle / "MANIFEST.sig").write_bytes(mallory.sign(body).hex().encode() + b"\n")
    capsys.readouterr()
    assert main(["release", "verify", str(bundle), "--fingerprint", fp]) == 1
    assert f"not the pinned {fp}" in capsys.readouterr().err
    assert main(["release", "verify", str(bundle), "--public-key", str(key) + ".pub"]) == 1


def test_verify_fails_on_an_added_fifo_or_empty_folder(audited, tmp_path, capsys):
    syn, audit, key = _fresh(audited, tmp_path)
    bundle = tmp_path / "bundle"
    assert _release(syn, audit, key, bundle) == 0
    verify = ["release", "verify", str(bundle), "--public-key", str(key) + ".pub"]
    (bundle / "data" / "empty").mkdir()
    assert main(verify) == 1 and "data/empty/ (an empty folder)" in capsys.readouterr().err
    (bundle / "data" / "empty").rmdir()
    os.mkfifo(bundle / "audit" / "pipe")
    assert main(verify) == 1 and "audit/pipe (not a regular file" in capsys.readouterr().err
    (bundle / "audit" / "pipe").unlink()
    assert main(verify) == 0


# ---- 4. patients on one side; one image file per record id -------------------------------------
def test_ingest_refuses_a_patient_on_both_sides_of_the_split_counting_not_naming(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((32, 32), 40 * len(name), np.uint8)).save(tmp_path / "img" / f"{name}.png")
    (tmp_path / "site.csv").write_text(
        'image_path,report,patient_id,split\nimg/a.png,"No effusion.",MRN77,train\nimg/b.png,"Effusion.",MRN77,test\nimg/c.png,"Clear.",MRN78,train\n',
        encoding="utf-8",
    )
    assert (
        main(
            [
                "--quiet",
                "data",
                "ingest",
                "--source",
                "manifest",
                "--path",
                str(tmp_path / "site.csv"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "1 patient(s) have records in both train and holdout" in err and "MRN77" not in err
    assert not (tmp_path / "o").exists()
    # A dataset folder whose split column does the same.
    recs = [
        Record(
            f"r{i}",
            "p1" if i < 2 else f"p{i}",
            f"s{i}",
            site="a",
            split="train" if i else "holdout",
            image=np.zeros((16, 16), np.uint8),
        )
        for i in range(4)
    ]
    write_dataset(tmp_path / "ds", recs)
    assert (
        main(
            [
                "--quiet",
                "data",
                "ingest",
                "--source",
                "manifest",
                "--path",
                str(tmp_path / "ds"),
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    assert "1 patient(s)" in capsys.readouterr().err


def test_ingest_refuses_a_mimic_split_file_that_splits_a_patient(tmp_path, capsys):
    from test_data_mimic import build_tree

    build_tree(tmp_path / "tree")
    path = tmp_path / "tree" / "mimic-cxr-2.0.0-split.csv"
    rows = list(csv.DictReader(open(path, newline="")))
    for r in rows:
        if r["dicom_id"] == "d2a":
            r["split"] = "test"  # subject 10000001's second study moves to the holdout
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert (
        main(
            [
                "--quiet",
                "data",
                "ingest",
                "--source",
                "mimic",
                "--path",
                str(tmp_path / "tree"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "1 patient(s) have records in both train and holdout" in capsys.readouterr().err


def test_a_site_refuses_the_audit_query_when_a_patient_is_on_both_sides(tmp_path):
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from cxrsynth.client.query import handle
    from cxrsynth.privacy.audit.protocol import make_query

    real, syn = write_audit_inputs(tmp_path, n_train=30, n_holdout=25, n_synthetic=5)
    recs, _ = read_dataset(real)
    recs[0] = recs[0].with_(patient_id=recs[-1].patient_id)  # a training study of a holdout patient
    write_dataset(tmp_path / "site", recs)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 11, 0
    query = Message(
        make_query(read_dataset(syn)[0], AuditPolicy(bootstrap=20, skip=("phi", "membership"))),
        dst_node_id=7,
        message_type="query",
    )
    ctx = Context(
        run_id=1, node_id=7, node_config={"data-path": str(tmp_path / "site")}, state=RecordDict(), run_config={}
    )
    with pytest.raises(InputError, match="1 patient"):
        handle(query, ctx)


def test_record_ids_that_differ_only_in_unsafe_characters_keep_their_own_images(tmp_path):
    ids = ["a/b", "a_b", "a b", "A_B", "a\\b"]
    recs = [Record(rid, f"p{i}", f"s{i}", image=np.full((16, 16), 10 + 40 * i, np.uint8)) for i, rid in enumerate(ids)]
    write_dataset(tmp_path, recs)
    back = {r.record_id: r for r in read_dataset(tmp_path)[0]}
    assert len(list((tmp_path / "images").iterdir())) == len(ids)
    for r in recs:
        assert np.array_equal(back[r.record_id].image, r.image), r.record_id


# ---- 5. each traceback of the issue is an exit 2 naming the file, row or key --------------------
def _ckpt_copy(checkpoint, tmp_path, name, data):
    d = tmp_path / "ck"
    shutil.copytree(checkpoint, d)
    (d / name).write_bytes(data(d / name) if callable(data) else data)
    return d


CHECKPOINT_DAMAGE = [
    ("run.yaml", b"model: [unclosed", "run.yaml, line 1"),
    ("run.yaml", b"\xff\xfe not text", "run.yaml: not UTF-8"),
    ("extra.json", b"{not json", "extra.json: not valid JSON"),
    ("train_state.json", b"{oops", "train_state.json: not valid JSON"),
    ("train_state.json", b"[]", "train_state.json: expected a JSON object"),
    ("format.json", b"[1,", "format.json: not valid JSON"),
    ("format.json", b'{"checkpoint_format": "x"}', "key 'checkpoint_format'"),
    ("model.safetensors", lambda p: p.read_bytes()[:100], "model.safetensors: not a readable safetensors file"),
]


@pytest.mark.parametrize(
    "name, data, words",
    CHECKPOINT_DAMAGE,
    ids=[f"{n}-{w.split(':')[-1].strip()[:20]}" for n, _, w in CHECKPOINT_DAMAGE],
)
@pytest.mark.parametrize("command", ["generate", "audit"])
def test_a_damaged_checkpoint_is_exit_2_naming_the_file(checkpoint, tmp_path, capsys, name, data, words, command):
    d = _ckpt_copy(checkpoint, tmp_path, name, data)
    if command == "generate":
        argv = ["generate", "--checkpoint", str(d), "--n", "2", "--out", str(tmp_path / "g")]
    else:
        real, syn = write_audit_inputs(tmp_path, n_train=25, n_holdout=20, n_synthetic=3)
        argv = [
            "audit",
            "--synthetic",
            str(syn),
            "--train",
            str(real),
            "--holdout",
            str(real),
            "--checkpoint",
            str(d),
            "--out",
            str(tmp_path / "a"),
        ]
    assert main(["--quiet", *argv]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "g").exists() and not (tmp_path / "a").exists()


def _big_cell_dataset(tmp_path):
    real, syn = write_audit_inputs(tmp_path, n_train=25, n_holdout=20, n_synthetic=3)
    rows = list(csv.DictReader(open(real / "manifest.csv", newline="", encoding="utf-8")))
    rows[4]["findings"] = "effusion " * 16_000  # 144,000 characters, over the csv module's 128 KiB
    with open(real / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return real, syn


@pytest.mark.parametrize("command", ["ingest", "evaluate", "audit"])
def test_a_csv_cell_over_128_kib_is_exit_2_naming_the_row(tmp_path, capsys, command):
    real, syn = _big_cell_dataset(tmp_path)
    argv = {
        "ingest": ["data", "ingest", "--source", "manifest", "--path", str(real), "--out", str(tmp_path / "o")],
        "evaluate": ["evaluate", "--synthetic", str(syn), "--real", str(real), "--out", str(tmp_path / "o")],
        "audit": [
            "audit",
            "--synthetic",
            str(syn),
            "--train",
            str(real),
            "--holdout",
            str(real),
            "--out",
            str(tmp_path / "o"),
        ],
    }[command]
    assert main(["--quiet", *argv]) == 2
    assert f"{real / 'manifest.csv'}, row 5" in capsys.readouterr().err


def _mimic_tree(tmp_path, damage):
    from test_data_mimic import build_tree

    build_tree(tmp_path / "tree")
    damage(tmp_path / "tree")
    return tmp_path / "tree"


def _gz_corrupt(tree):
    (tree / "mimic-cxr-2.0.0-metadata.csv").unlink()
    (tree / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")


def _short_chexpert(tree):
    path = tree / "mimic-cxr-2.0.0-chexpert.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].split(",")[0]  # a row cut after its first cell: no study_id
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "damage, words",
    [
        (_gz_corrupt, "metadata.csv.gz: not a readable gzip file"),
        (_short_chexpert, "chexpert.csv, row 2: malformed row"),
    ],
)
def test_a_damaged_mimic_table_is_exit_2_or_a_named_row(tmp_path, capsys, damage, words):
    tree = _mimic_tree(tmp_path, damage)
    code = main(
        [
            "--quiet",
            "data",
            "ingest",
            "--source",
            "mimic",
            "--path",
            str(tree),
            "--out",
            str(tmp_path / "o"),
            "--strict",
        ]
    )
    assert code == 2 and words in capsys.readouterr().err


def test_a_short_chexpert_row_is_skipped_and_named_without_strict(tmp_path):
    tree = _mimic_tree(tmp_path, _short_chexpert)
    assert (
        main(["--quiet", "data", "ingest", "--source", "mimic", "--path", str(tree), "--out", str(tmp_path / "o")])
        == 0
    )
    report = json.loads((tmp_path / "o" / "ingest_report.json").read_text())
    assert any(p["row"] == 2 and "malformed row" in p["reason"] for p in report["problems"])


def _plain(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "img" / "a.png")
    (tmp_path / "header.csv").write_text("image_path,report\n", encoding="utf-8")
    (tmp_path / "quote.csv").write_text(
        'image_path,report\nimg/a.png,"no closing quote\nimg/a.png,"second"\nimg/a.png,"third"\n', encoding="utf-8"
    )
    (tmp_path / "cfg.yaml").write_text("modle: {family: mopoe}\n", encoding="utf-8")
    (tmp_path / "in.jsonl").write_text('{"id": "1", "text": "No effusion."}\n', encoding="utf-8")


# (arguments with {t} for the test folder, {ck} the checkpoint, {ph} a phantom dataset; words the message must hold)
BAD_ARGUMENTS = [
    ("phantom --out a file", "data phantom --n 4 --out {t}/file", "{t}/file: is a file"),
    ("ingest --out a file", "data ingest --source manifest --path {ph} --out {t}/file", "{t}/file: is a file"),
    ("generate --out a file", "generate --checkpoint {ck} --n 2 --out {t}/file", "{t}/file: is a file"),
    ("evaluate --out a file", "evaluate --synthetic {ph} --real {ph} --out {t}/file", "{t}/file: is a file"),
    ("audit --out a file", "audit --synthetic {ph} --train {ph} --holdout {ph} --out {t}/file", "{t}/file: is a file"),
    ("train --out a file", "train --config {ck}/run.yaml --out {t}/file", "{t}/file: is a file"),
    ("release --key a folder", "release --synthetic {ph} --audit {t} --key {t} --out {t}/b", "--key {t}: is a folder"),
    (
        "release --out a file",
        "release --synthetic {ph} --audit {t} --key {t}/k.pem --out {t}/file",
        "--out {t}/file: is a file",
    ),
    ("release key --out an existing file", "release key --out {t}/file", "{t}/file: exists"),
    ("verify --public-key a folder", "release verify {t} --public-key {t}", "--public-key {t}: is a folder"),
    ("verify a file", "release verify {t}/file --fingerprint " + "a" * 64, "{t}/file: is a file"),
    ("phantom --size -5", "data phantom --n 4 --size -5 --out {t}/p", "image_size"),
    ("ingest --size -5", "data ingest --source manifest --path {ph} --size -5 --out {t}/o", "--size -5"),
    ("ingest --size 60000", "data ingest --source manifest --path {ph} --size 60000 --out {t}/o", "--size 60000"),
    ("phantom --size 60000", "data phantom --n 4 --size 60000 --out {t}/p", "image_size"),
    ("phantom --holdout 2", "data phantom --n 4 --holdout 2 --out {t}/p", "--holdout 2"),
    ("train --steps 0", "train --config {ck}/run.yaml --steps 0 --out {t}/tr", "train.steps"),
    ("generate --n -3", "generate --checkpoint {ck} --n -3 --out {t}/g", "--n -3"),
    (
        "evaluate: missing --extractor",
        "evaluate --synthetic {ph} --real {ph} --extractor {t}/nope.pt --out {t}/e",
        "--extractor {t}/nope.pt",
    ),
    (
        "evaluate: missing --checkpoint",
        "evaluate --synthetic {ph} --real {ph} --checkpoint {t}/nope --out {t}/e",
        "--checkpoint {t}/nope",
    ),
    ("header-only CSV", "data ingest --source manifest --path {t}/header.csv --out {t}/o", "{t}/header.csv: no rows"),
    ("unterminated quote", "data ingest --source manifest --path {t}/quote.csv --out {t}/o", "{t}/quote.csv, row 1"),
    ("config: unknown key and no model", "train --config {t}/cfg.yaml --out {t}/tr", "['modle']"),
    ("deid run --out a folder", "deid run --in {t}/in.jsonl --out {t}/img", "{t}/img: Is a directory"),
    ("fl simulate --out a file", "fl simulate --config {ck}/run.yaml --out {t}/file", "{t}/file: File exists"),
]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    assert (
        main(
            ["--quiet", "data", "phantom", "--n", "12", "--size", "32", "--holdout", "0.5", "--out", str(root / "ph")]
        )
        == 0
    )
    return root / "ph"


@pytest.mark.parametrize("argv, words", [case[1:] for case in BAD_ARGUMENTS], ids=[case[0] for case in BAD_ARGUMENTS])
def test_a_bad_argument_is_exit_2_with_a_message_naming_it(checkpoint, phantom_dir, tmp_path, capsys, argv, words):
    _plain(tmp_path)
    fill = {"t": str(tmp_path), "ck": str(checkpoint), "ph": str(phantom_dir)}
    before = {p: (tmp_path / p).read_bytes() for p in _files(tmp_path)}
    assert main(["--quiet", *argv.format(**fill).split()]) == 2
    assert words.format(**fill) in capsys.readouterr().err
    assert all((tmp_path / p).read_bytes() == b for p, b in before.items())  # nothing lost
    if "deid" not in argv:  # (deid run opens its audit log beside --out first; privacy/deid's own order)
        assert set(_files(tmp_path)) == set(before)  # and nothing half-written


def test_non_utf8_phi_headers_are_exit_2_naming_the_line(phantom_dir, tmp_path, capsys):
    shutil.copytree(phantom_dir, tmp_path / "ds")
    lines = (tmp_path / "ds" / "phi_headers.jsonl").read_bytes().splitlines()
    lines[2] = lines[2].replace(b"PatientName", b"Patient\xffName")
    (tmp_path / "ds" / "phi_headers.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert (
        main(
            [
                "--quiet",
                "data",
                "ingest",
                "--source",
                "manifest",
                "--path",
                str(tmp_path / "ds"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "phi_headers.jsonl, line 3: not UTF-8" in capsys.readouterr().err


def test_certificate_private_keys_are_never_readable_by_others_and_not_committed(tmp_path):
    import importlib.util
    import subprocess
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "certs_under_test", Path(__file__).parents[1] / "deploy" / "certs.py"
    )
    certs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(certs)
    previous = os.umask(0o022)
    try:
        priv = certs.make_node_key(tmp_path, "hospital-a")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    repo = Path(__file__).parents[1]
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/certs/ca.key"], cwd=repo)
    assert ignored.returncode == 0
