"""Fuzzing every command's inputs (issue 19): malformed, truncated, oversized and wrong-type
variants of CSV, YAML, JSON lines, PNG, DICOM, checkpoint files, keys and bundles.

Each example runs the real command in-process and must end in an exit code (0 ok, 1 a check
failed, 2 bad input), never a traceback; an exit 2 must name the fuzzed file (or the option
holding it); and what was already written (an earlier dataset in --out, a folder about to be
replaced) must be intact. The default suite runs a fixed, small set of examples per input (about
half a minute in all); `pytest -m slow` runs many random ones.
"""

from __future__ import annotations

import contextlib
import functools
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cxrsynth.cli import main
from cxrsynth.config import AuditPolicy, RunConfig
from cxrsynth.data.phantom import make_phantom

FAST, SLOW = 6, 150
TOKENS = [
    b'"',
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff\xfe",
    b",",
    b",,,,,,",
    b"{",
    b"[",
    b": ",
    b"- ",
    b"\t",
    b"x" * 140_000,
    b"\xe9",
    b"-1",
    b"1e309",
    b"NaN",
    b"null",
]


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """`base` with one to three edits: truncation, deletion, random or special bytes inserted,
    a slice replaced or repeated, a byte flipped; sometimes empty."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "delete", "insert", "token", "replace", "repeat", "flip", "empty"]))
        k = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[k:]
        elif op == "delete":
            del data[k : k + draw(st.integers(1, 64))]
        elif op == "insert":
            data[k:k] = draw(st.binary(min_size=1, max_size=32))
        elif op == "token":
            data[k:k] = draw(st.sampled_from(TOKENS))
        elif op == "replace":
            data[k : k + draw(st.integers(1, 16))] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            data[k:k] = data[k : k + draw(st.integers(1, 200))]
        elif op == "flip" and data:
            data[k] ^= 1 << draw(st.integers(0, 7))
        elif op == "empty":
            data = bytearray()
    return bytes(data)


SCALARS = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=True) | st.text(max_size=12)


def structured(keys: list[str]):
    """Random YAML/JSON-like documents whose keys are mostly the real ones, with wrong-type values."""
    return st.recursive(
        SCALARS,
        lambda c: (
            st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), c, max_size=4)
        ),
        max_leaves=8,
    )


def fuzz(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=n == FAST,  # the default suite always runs the same examples
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def run(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of the command; an exception escaping it is a failure of the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["--quiet", *argv])
        except SystemExit as e:  # argparse's own usage errors
            code = e.code
    return code, err.getvalue()


def check(code: int, err: str, *names: str) -> None:
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert any(n in err for n in names), f"exit 2 without naming {names}: {err}"


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- materials, made once ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzbase")
    assert (
        main(
            [
                "--quiet",
                "data",
                "phantom",
                "--n",
                "8",
                "--size",
                "32",
                "--holdout",
                "0.5",
                "--out",
                str(root / "dataset"),
            ]
        )
        == 0
    )
    (root / "site" / "img").mkdir(parents=True)
    for i, r in enumerate(make_phantom(3, sites=1, seed=2, image_size=32)):
        Image.fromarray(r.image).save(root / "site" / "img" / f"{i}.png")
    (root / "site" / "site.csv").write_bytes(
        b'image_path,report,patient_id,Pleural Effusion\nimg/0.png,"FINDINGS: Small left effusion.",MRN1,1\n'
        b'img/1.png,"FINDINGS: No effusion.",MRN2,0\nimg/2.png,"IMPRESSION: Normal.",MRN3,\n'
    )
    (root / "run.yaml").write_text(
        "preset: mopoe-tiny\nmodel: {image_size: 16, latent_dim: 8, channels: 8, text_length: 64, text_channels: 16, embed_dim: 8, vocab_min_count: 2}\n"
        "data: {phantom: {n: 40, image_size: 32}}\ntrain: {steps: 1, batch_size: 8}\n",
        encoding="utf-8",
    )
    assert main(["--quiet", "train", "--config", str(root / "run.yaml"), "--out", str(root / "ckpt")]) == 0
    assert (
        main(["--quiet", "generate", "--checkpoint", str(root / "ckpt"), "--n", "2", "--out", str(root / "previous")])
        == 0
    )
    from test_data_mimic import build_tree

    build_tree(root / "mimic")
    return root


def _tmp(base: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=base))


# ---- the properties --------------------------------------------------------------------------------
REWRITTEN = ("manifest.csv", "ingest_report.json", "overview.html", "phi_headers.jsonl", "site_secret.key")


def _ids(manifest: bytes) -> set[str]:
    return {line.split(",")[0] for line in manifest.decode().splitlines()[1:]}


def site_csv(base: Path, data: bytes) -> None:
    t = _tmp(base)
    shutil.copytree(base / "site", t / "site")
    (t / "site" / "site.csv").write_bytes(data)
    shutil.copytree(base / "dataset", t / "out")  # an earlier dataset the ingest adds to
    before = snapshot(t / "out")
    code, err = run(
        ["data", "ingest", "--source", "manifest", "--path", str(t / "site" / "site.csv"), "--out", str(t / "out")]
    )
    check(code, err, "site.csv")
    after = snapshot(t / "out")
    # Every earlier record and image is still there, whatever the outcome (an ingest that read
    # rows but kept none still writes its report, which says why).
    assert _ids(before["manifest.csv"]) <= _ids(after["manifest.csv"])
    assert all(after.get(k) == v for k, v in before.items() if k not in REWRITTEN)


def dataset_manifest(base: Path, data: bytes) -> None:
    t = _tmp(base)
    shutil.copytree(base / "dataset", t / "ds")
    (t / "ds" / "manifest.csv").write_bytes(data)
    code, err = run(["data", "ingest", "--source", "manifest", "--path", str(t / "ds"), "--out", str(t / "out")])
    check(code, err, "manifest.csv", "none of the")
    if code != 0 and (t / "out").exists():  # rows were read and none kept: only the report says why
        assert '"kept": 0' in (t / "out" / "ingest_report.json").read_text()


MIMIC_TABLES = ["mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-split.csv"]


def mimic_table(base: Path, name: str, data: bytes, gz: bool) -> None:
    import gzip

    t = _tmp(base)
    shutil.copytree(base / "mimic", t / "tree")
    (t / "tree" / name).unlink()
    (t / "tree" / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    code, err = run(["data", "ingest", "--source", "mimic", "--path", str(t / "tree"), "--out", str(t / "out")])
    check(code, err, name, "none of the")


def phi_headers(base: Path, data: bytes) -> None:
    t = _tmp(base)
    shutil.copytree(base / "dataset", t / "ds")
    (t / "ds" / "phi_headers.jsonl").write_bytes(data)
    code, err = run(["data", "ingest", "--source", "manifest", "--path", str(t / "ds"), "--out", str(t / "out")])
    check(code, err, "phi_headers.jsonl")


def png(base: Path, data: bytes) -> None:
    t = _tmp(base)
    shutil.copytree(base / "site", t / "site")
    (t / "site" / "img" / "1.png").write_bytes(data)
    code, err = run(
        [
            "data",
            "ingest",
            "--source",
            "manifest",
            "--path",
            str(t / "site" / "site.csv"),
            "--out",
            str(t / "out"),
            "--strict",
        ]
    )
    check(code, err, "1.png")
    if code == 2:
        assert not (t / "out").exists()


def dicom(base: Path, data: bytes) -> None:
    t = _tmp(base)
    (t / "in").mkdir()
    (t / "in" / "a.dcm").write_bytes(data)
    code, err = run(["data", "ingest", "--source", "dicom", "--path", str(t / "in"), "--out", str(t / "out")])
    check(code, err, "a.dcm", str(t / "in"))


def policy_yaml(base: Path, data: bytes) -> None:
    t = _tmp(base)
    (t / "policy.yaml").write_bytes(data)
    # The synthetic folder does not exist: a policy that validates is refused for that instead, quickly.
    code, err = run(
        [
            "audit",
            "--synthetic",
            str(t / "none"),
            "--train",
            str(base / "dataset"),
            "--holdout",
            str(base / "dataset"),
            "--policy",
            str(t / "policy.yaml"),
            "--out",
            str(t / "a"),
        ]
    )
    assert code == 2
    check(code, err, "policy.yaml", str(t / "none"))
    assert not (t / "a").exists()


def run_config(base: Path, data: bytes) -> None:
    t = _tmp(base)
    (t / "run.yaml").write_bytes(data)
    # No data folder: a config that validates is refused for that instead, before any training.
    code, err = run(["train", "--config", str(t / "run.yaml"), "--data", str(t / "none"), "--out", str(t / "ck")])
    assert code == 2
    check(code, err, "run.yaml", str(t / "none"), "preset")


def checkpoint_file(base: Path, name: str, data: bytes) -> None:
    import re

    from hypothesis import assume

    # A run.yaml edited to huge network sizes would build a huge model before its weights are
    # found not to fit: kept out, so the fuzz does not exhaust the machine's memory.
    assume(name != "run.yaml" or all(int(n) <= 512 for n in re.findall(rb"\d+", data)))
    t = _tmp(base)
    shutil.copytree(base / "ckpt", t / "ck")
    (t / "ck" / name).write_bytes(data)
    shutil.copytree(base / "previous", t / "out")
    before = snapshot(t / "out")
    code, err = run(["generate", "--checkpoint", str(t / "ck"), "--n", "2", "--out", str(t / "out"), "--replace"])
    check(code, err, name, "run.yaml")  # a bad run.yaml may be named by the key that is wrong in it
    if code != 0:
        assert snapshot(t / "out") == before
    assert not [p for p in t.iterdir() if ".partial" in p.name or ".old" in p.name]


def release_key(base: Path, data: bytes) -> None:
    t = _tmp(base)
    (t / "key.pem").write_bytes(data)
    code, err = run(
        [
            "release",
            "--synthetic",
            str(base / "previous"),
            "--audit",
            str(t),
            "--key",
            str(t / "key.pem"),
            "--out",
            str(t / "bundle"),
        ]
    )
    check(code, err, "key.pem", "audit.json")
    assert code != 0 and not (t / "bundle").exists()


@pytest.fixture(scope="module")
def bundle(base, tmp_path_factory):
    from test_audit_support import make_key, write_audit_inputs

    root = tmp_path_factory.mktemp("fuzzbundle")
    real, syn = write_audit_inputs(root, n_train=40, n_holdout=25, n_synthetic=10)
    (root / "policy.yaml").write_text(
        "skip: [membership, phi]\nmax_closeness_upper: 0.95\nbootstrap: 20\n", encoding="utf-8"
    )
    key = make_key(root)
    assert (
        main(
            [
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
        )
        == 0
    )
    assert (
        main(
            [
                "--quiet",
                "release",
                "--synthetic",
                str(syn),
                "--audit",
                str(root / "audit"),
                "--key",
                str(key),
                "--out",
                str(root / "bundle"),
            ]
        )
        == 0
    )
    return root


def bundle_file(root: Path, name: str, data: bytes) -> None:
    t = _tmp(root)
    shutil.copytree(root / "bundle", t / "b")
    original = (t / "b" / name).read_bytes()
    (t / "b" / name).write_bytes(data)
    code, err = run(["release", "verify", str(t / "b"), "--public-key", str(root / "steward.pem.pub")])
    check(code, err, name)
    same = (
        data.strip() == original.strip() if name == "MANIFEST.sig" else data == original
    )  # the signature is read as hex text
    assert code == (0 if same else 1), err


def public_key(root: Path, data: bytes) -> None:
    t = _tmp(root)
    (t / "k.pub").write_bytes(data)
    code, err = run(["release", "verify", str(root / "bundle"), "--public-key", str(t / "k.pub")])
    check(code, err, "k.pub")
    if code == 0:  # the edit left the same key (PEM readers skip some surrounding bytes)
        from cxrsynth.privacy.keys import fingerprint, load_public_key

        assert fingerprint(load_public_key(t / "k.pub")) == fingerprint(load_public_key(root / "steward.pem.pub"))


def audit_json(root: Path, data: bytes) -> None:
    t = _tmp(root)
    shutil.copytree(root / "audit", t / "audit")
    original = (t / "audit" / "audit.json").read_bytes()
    (t / "audit" / "audit.json").write_bytes(data)
    syn = root / "syn"
    code, err = run(
        [
            "release",
            "--synthetic",
            str(syn),
            "--audit",
            str(t / "audit"),
            "--key",
            str(root / "steward.pem"),
            "--out",
            str(t / "bundle"),
        ]
    )
    check(code, err, "audit.json")
    assert code == 0 if data == original else code in (1, 2)


# ---- the tests: each property in the default suite (fixed examples) and in the slow one -----------
def _bytes(path: Path) -> bytes:
    return path.read_bytes()


@functools.cache
def _dicom_bytes() -> bytes:
    """A small valid DICOM image, the same bytes every time (fixed UIDs: the fuzz must be replayable)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.ViewPosition = (
        "DOE^JANE",
        "123",
        "1.2.826.0.1.3680043.8.498.2",
        "PA",
    )
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 8, 8, 7, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = (np.arange(256) % 256).astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _png_variants() -> st.SearchStrategy:
    """Valid PNGs of odd shape, mode and size (including a decompression bomb header) besides mutations."""

    def encode(arr, mode=None):
        buf = io.BytesIO()
        Image.fromarray(arr, mode).save(buf, format="PNG")
        return buf.getvalue()

    odd = st.sampled_from(
        [
            encode(np.zeros((1, 1), np.uint8)),
            encode(np.zeros((3, 200), np.uint8)),
            encode(np.zeros((8, 8, 4), np.uint8)),
            encode((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)),
            encode(np.zeros((20000, 1), np.uint8)),
        ]
    )
    bomb = st.just(_bomb_png())
    return odd | bomb


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 100,000 x 100,000 pixels."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        + chunk(b"IEND", b"")
    )


POLICY_KEYS = list(AuditPolicy.model_fields)
RUN_KEYS = list(RunConfig.model_fields) + ["preset"]
CHECKPOINT_FILES = ["run.yaml", "extra.json", "train_state.json", "format.json", "model.safetensors"]
BUNDLE_FILES = [
    "MANIFEST.json",
    "MANIFEST.sig",
    "SIGNER.pub",
    "DATASET_CARD.md",
    "data/manifest.csv",
    "audit/audit.json",
]


def _cases(n: int, marks=()):
    """The fuzz tests for `n` examples each."""

    @fuzz(n)
    @given(st.data())
    def csv_inputs(base, data):
        site_csv(base, data.draw(mutated(_bytes(base / "site" / "site.csv")), "site.csv"))
        dataset_manifest(base, data.draw(mutated(_bytes(base / "dataset" / "manifest.csv")), "manifest.csv"))
        table = data.draw(st.sampled_from(MIMIC_TABLES), "MIMIC table")
        mimic_table(
            base,
            table,
            data.draw(mutated(_bytes(base / "mimic" / table)), "table bytes"),
            data.draw(st.booleans(), "gzip"),
        )

    @fuzz(n)
    @given(st.data())
    def jsonl_png_dicom_inputs(base, data):
        phi_headers(base, data.draw(mutated(_bytes(base / "dataset" / "phi_headers.jsonl")), "phi_headers.jsonl"))
        png(base, data.draw(mutated(_bytes(base / "site" / "img" / "1.png")) | _png_variants(), "png"))
        dicom(base, data.draw(mutated(_dicom_bytes()), "dicom"))

    @fuzz(n)
    @given(st.data())
    def yaml_inputs(base, data):
        text = (base / "run.yaml").read_bytes()
        doc = data.draw(mutated(text) | structured(RUN_KEYS).map(lambda d: yaml.safe_dump(d).encode()), "run.yaml")
        run_config(base, doc)
        pol = data.draw(
            mutated(b"max_copy_rate: 0.001\nskip: [phi]\nweak_labels: drop\n")
            | structured(POLICY_KEYS).map(lambda d: yaml.safe_dump(d).encode()),
            "policy.yaml",
        )
        policy_yaml(base, pol)

    @fuzz(n)
    @given(st.data())
    def checkpoint_inputs(base, data):
        name = data.draw(st.sampled_from(CHECKPOINT_FILES), "file")
        checkpoint_file(base, name, data.draw(mutated(_bytes(base / "ckpt" / name)), "bytes"))

    @fuzz(n)
    @given(st.data())
    def key_and_bundle_inputs(base, bundle, data):
        release_key(base, data.draw(mutated(_bytes(bundle / "steward.pem")), "key"))
        public_key(bundle, data.draw(mutated(_bytes(bundle / "steward.pem.pub")), "pub"))
        name = data.draw(st.sampled_from(BUNDLE_FILES), "bundle file")
        bundle_file(bundle, name, data.draw(mutated(_bytes(bundle / "bundle" / name)), "bytes"))
        audit_json(bundle, data.draw(mutated(_bytes(bundle / "audit" / "audit.json")), "audit.json"))

    return [
        pytest.param(f, id=f.__name__, marks=marks)
        for f in (csv_inputs, jsonl_png_dicom_inputs, yaml_inputs, checkpoint_inputs, key_and_bundle_inputs)
    ]


def _call(case, request):
    import inspect

    names = [p for p in inspect.signature(case.hypothesis.inner_test).parameters if p != "data"]
    case(**{n: request.getfixturevalue(n) for n in names})


@pytest.mark.parametrize("case", _cases(FAST))
def test_fuzzed_inputs_end_in_an_exit_code_naming_the_file(case, request):
    _call(case, request)


@pytest.mark.parametrize("case", _cases(SLOW, marks=pytest.mark.slow))
def test_fuzzed_inputs_end_in_an_exit_code_naming_the_file_many_examples(case, request):
    _call(case, request)
