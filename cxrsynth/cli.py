"""The `cxrsynth` command.

Arguments are declared here, in one place, so `cxrsynth --help` is fast and complete. Each command
runs a handler that `resolve` imports when it runs. This module and `cxrsynth.commands` are the
pipeline layer, the top of the import order (core <- privacy <- Flower apps <- pipeline/CLI).
Exit codes: 0 ok, 1 a check failed, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

from cxrsynth.config import preset_names
from cxrsynth.errors import CxrError
from cxrsynth.models import registry
from cxrsynth.progress import setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxrsynth",
        description="Federated, privacy-aware synthetic chest X-ray data: train across hospitals, audit, release.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--verbose", action="store_true", help="info and debug lines, third-party notices included")
    # The same options after the subcommand; SUPPRESS keeps one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress output")
    common.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="info and debug lines, third-party notices included",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    presets_help = f"YAML path or preset ({', '.join(preset_names())})"

    d = sub.add_parser("demo", parents=[common], help="the main job end to end on phantom data (3 hospitals)")
    d.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    d.add_argument("--family", choices=registry.names(), default="ldm", help="the model family (default: ldm)")
    d.add_argument("--quick", action="store_true", help="a shortened run (fewer records and rounds)")
    d.add_argument(
        "--base",
        default=None,
        metavar="DIR",
        help="fine-tune this base (`cxrsynth pretrain`) instead of pretraining one in the demo",
    )
    d.add_argument("--seed", type=int, default=0, help="phantom data, pretraining, federation and generation seed")
    d.set_defaults(path=("demo",))

    data = sub.add_parser("data", parents=[common], help="make phantom data or ingest a site's data").add_subparsers(
        dest="data_cmd", metavar="ACTION", required=True
    )
    ph = data.add_parser("phantom", parents=[common], help="write a phantom dataset (with PHI in its reports)")
    ph.add_argument("--out", required=True)
    ph.add_argument("--n", type=int, default=500)
    ph.add_argument("--sites", type=int, default=3)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--size", type=int, default=64, help="image side in pixels")
    ph.add_argument("--no-lateral", action="store_true")
    ph.add_argument(
        "--holdout", type=float, default=0.0, help="share of patients marked holdout (0: split left empty)"
    )
    ph.add_argument(
        "--replace",
        action="store_true",
        help="replace a non-empty --out whole (written beside it, swapped in at the end)",
    )
    ph.set_defaults(path=("data", "phantom"))
    ing = data.add_parser(
        "ingest", parents=[common], help="read a manifest, MIMIC-CXR-JPG tree or DICOM folder into the dataset format"
    )
    ing.add_argument("--source", choices=["manifest", "mimic", "dicom"], required=True)
    ing.add_argument(
        "--path", dest="source_path", required=True, help="the manifest (dir or CSV), MIMIC tree or DICOM folder"
    )
    ing.add_argument("--out", required=True)
    ing.add_argument("--site", default="site0")
    ing.add_argument("--size", type=int, default=0, help="resize images to this side (0: keep)")
    ing.add_argument("--holdout", type=float, default=0.2, help="share of patients held out")
    ing.add_argument("--seed", type=int, default=0)
    ing.add_argument("--strict", action="store_true", help="fail on the first bad file or row")
    ing.add_argument(
        "--replace",
        action="store_true",
        help="replace a non-empty --out whole (default: add to an earlier ingest's dataset; refuse any other folder)",
    )
    ing.add_argument(
        "--labels",
        default="chexpert",
        choices=["chexpert", "nih"],
        help="vocabulary of a site manifest's label columns; nih: NIH ChestX-ray14's 15 names, mapped onto the 14 (cxrsynth/data/label_maps.py)",
    )
    ing.add_argument(
        "--ignore-columns",
        default="",
        metavar="A,B",
        help="site manifest columns to leave unread (demographics, notes); any other unknown column is refused",
    )
    ing.set_defaults(path=("data", "ingest"))

    de = sub.add_parser(
        "deid", parents=[common], help="de-identify reports (Presidio, offline) or measure it"
    ).add_subparsers(dest="deid_cmd", metavar="ACTION", required=True)
    dr = de.add_parser("run", parents=[common], help="JSON lines in -> de-identified JSON lines out")
    dr.add_argument("--in", dest="input", required=True)
    dr.add_argument("--out", required=True)
    dr.add_argument("--config", default=None, help="de-identification settings (YAML)")
    dr.add_argument("--workers", type=int, default=1)
    dr.add_argument("--audit-log", default=None, help="where the on-site audit log goes (default: beside --out)")
    dr.set_defaults(path=("deid", "run"))
    dv = de.add_parser("eval", parents=[common], help="recall/precision per entity type against a gold file")
    dv.add_argument("--gold", required=True)
    dv.add_argument("--out", default=None, help="write the metrics as JSON here")
    dv.add_argument("--config", default=None)
    dv.set_defaults(path=("deid", "eval"))
    dd = de.add_parser(
        "dicom",
        parents=[common],
        help="a folder of DICOM files -> de-identified copies (PS3.15 E.1-1), same relative paths",
    )
    dd.add_argument("--in", dest="input", required=True, help="folder of DICOM files (read recursively)")
    dd.add_argument("--out", required=True, help="output folder (outside --in)")
    dd.add_argument(
        "--config", default=None, help="de-identification settings (YAML): dicom_dates, dicom_device, secret_file"
    )
    dd.add_argument("--audit-log", default=None, help="where the on-site audit log goes (default: beside --out)")
    dd.set_defaults(path=("deid", "dicom"))

    pt = sub.add_parser(
        "pretrain",
        parents=[common],
        help="train a base model on public data (no DP, no federation) for the sites to fine-tune",
    )
    pt.add_argument("--config", required=True, help=presets_help)
    src = pt.add_mutually_exclusive_group()
    src.add_argument(
        "--data", default=None, help="a public dataset directory (`cxrsynth data ingest`); never a site's data"
    )
    src.add_argument(
        "--phantom",
        type=int,
        default=None,
        metavar="N",
        help="a public phantom cohort of N studies (default: 3000), drawn in other acquisition styles than the hospitals'",
    )
    pt.add_argument("--out", required=True, help="the base checkpoint directory (holds base.json with its SHA-256)")
    pt.add_argument("--steps", type=int, default=None, help="override train.steps")
    pt.add_argument("--seed", type=int, default=1, help="phantom cohort seed")
    pt.add_argument(
        "--phantom-styles",
        type=int,
        default=None,
        metavar="K",
        help="acquisition styles of the phantom cohort (default: 2, as a collection from one or two hospitals; the sites' looks then carry theirs, federation.acquisition)",
    )
    pt.add_argument(
        "--phantom-labels",
        choices=("nih", "all"),
        default="all",
        help="the phantom cohort's label vocabulary: all (default) states the 14 labels; nih leaves the three labels NIH ChestX-ray14 has no source for not stated, as such a public collection would",
    )
    pt.set_defaults(path=("pretrain",))

    t = sub.add_parser("train", parents=[common], help="train one model at one site (no federation)")
    t.add_argument("--config", required=True, help=presets_help)
    t.add_argument("--data", default=None, help="dataset directory (default: phantom data)")
    t.add_argument("--out", default=None, help="checkpoint directory (default: train.out of the config)")
    t.add_argument("--steps", type=int, default=None, help="override train.steps")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="build the model, take two steps at a tiny batch on phantom data, print parameters, step time and memory at the configured batch; writes nothing",
    )
    t.add_argument("--dry-run-batch", type=int, default=2, metavar="N", help="the tiny batch of --dry-run (default 2)")
    t.set_defaults(path=("train",))

    fl = sub.add_parser("fl", parents=[common], help="federated training").add_subparsers(
        dest="fl_cmd", metavar="ACTION", required=True
    )
    fs = fl.add_parser("simulate", parents=[common], help="K simulated sites with Flower's simulation engine")
    fs.add_argument("--config", required=True)
    fs.add_argument("--data", default=None, help="dataset directory to partition (default: phantom data)")
    fs.add_argument("--out", default=None)
    fs.add_argument("--rounds", type=int, default=None)
    fs.add_argument("--resume", action="store_true")
    fs.set_defaults(path=("fl", "simulate"))

    g = sub.add_parser("generate", parents=[common], help="checkpoint -> synthetic dataset")
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prompts", default=None, help="LDM: a file of prompts, one a line")
    g.add_argument("--labels-from", default=None, help="condition on the label mix of this dataset directory")
    g.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="LDM: classifier-free guidance scale (default: the checkpoint's model.guidance)",
    )
    g.add_argument(
        "--sample-steps",
        type=int,
        default=None,
        help="LDM: sampler steps (default: the checkpoint's model.sample_steps)",
    )
    g.add_argument(
        "--replace",
        action="store_true",
        help="replace a non-empty --out whole (written beside it, swapped in at the end)",
    )
    g.set_defaults(path=("generate",))

    ev = sub.add_parser("evaluate", parents=[common], help="fidelity, diversity, utility and report metrics")
    ev.add_argument("--synthetic", required=True)
    ev.add_argument("--real", required=True)
    ev.add_argument("--out", required=True)
    ev.add_argument(
        "--baseline",
        default=None,
        metavar="DIR",
        help="synthetic data of the base model before fine-tuning, scored beside --synthetic (what the sites added)",
    )
    ev.add_argument(
        "--checkpoint", default=None, help="a checkpoint for its family's own metrics (e.g. a latent linear probe)"
    )
    ev.add_argument("--extractor", default="classifier", help="feature extractor: classifier or a local weights file")
    ev.add_argument("--classifier-steps", type=int, default=300, help="training steps of each utility classifier")
    ev.add_argument("--seeds", type=int, default=1, help="utility classifiers per arm, averaged")
    ev.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="resamples of the holdout for the 95%% intervals of the utility gains (0: none)",
    )
    ev.set_defaults(path=("evaluate",))

    a = sub.add_parser(
        "audit", parents=[common], help="privacy audit of a synthetic dataset; exit 1 when a check fails"
    )
    a.add_argument("--synthetic", required=True)
    a.add_argument("--train", required=True)
    a.add_argument("--holdout", required=True)
    a.add_argument("--policy", default=None, help="policy YAML (default thresholds otherwise)")
    a.add_argument("--checkpoint", default=None, help="for membership inference and the DP ledger")
    a.add_argument("--out", required=True, help="a new folder, or an earlier audit's (replaced)")
    a.add_argument("--key", default=None, help="the steward's Ed25519 key: seals the audit, which a release requires")
    _register_arg(a)
    _passphrase_args(a)
    a.set_defaults(path=("audit",))

    r = sub.add_parser(
        "release",
        parents=[common],
        help="signed release bundle after a passing audit; `release verify DIR`, `release key --out FILE`",
    )
    r.add_argument("--synthetic")
    r.add_argument("--audit")
    r.add_argument(
        "--key", help="the steward's Ed25519 private key (PEM), the one that sealed the audit; never made here"
    )
    _register_arg(r)
    _passphrase_args(r)
    r.add_argument("--out")
    r.set_defaults(path=("release",))
    rs = r.add_subparsers(dest="release_cmd", metavar="verify|audits|key")
    rv = rs.add_parser("verify", parents=[common], help="check a release bundle's signature and every file hash")
    rv.add_argument("dir")
    rv.add_argument(
        "--fingerprint",
        default=None,
        help="the signer's key fingerprint, from the steward (pin it); the bundle's SIGNER.pub must match",
    )
    rv.add_argument("--public-key", default=None, help="the signer's public key file (PEM)")
    rv.set_defaults(path=("release", "verify"))
    ra = rs.add_parser(
        "audits",
        parents=[common],
        help="list the steward's register of sealed audits, every line's signature and chain checked",
    )
    ra.add_argument("--key", default=None, help="the steward's private key; the register beside it is read")
    ra.add_argument("--public-key", default=None, help="or the steward's public key (PEM), with --register")
    _register_arg(ra)
    _passphrase_args(ra)
    ra.set_defaults(path=("release", "audits"))
    rk = rs.add_parser(
        "key",
        parents=[common],
        help="make the steward's Ed25519 signing key (FILE, FILE.pub) and print its fingerprint",
    )
    rk.add_argument("--out", required=True, help="the private key file to create (never overwritten)")
    _passphrase_args(rk, "encrypt the key with the passphrase ")
    rk.set_defaults(path=("release", "key"))
    return p


def _register_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--register",
        default=None,
        help="the steward's register of sealed audits (default: KEY.audits.jsonl beside --key)",
    )


def _passphrase_args(p: argparse.ArgumentParser, what: str = "the key's passphrase ") -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--passphrase-file", default=None, help=what + "in this file (its first line)")
    g.add_argument("--passphrase-env", default=None, metavar="VARIABLE", help=what + "in this environment variable")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cxrsynth")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def resolve(path: tuple[str, ...]) -> Callable[[argparse.Namespace], int]:
    """The handler of a command path, imported when the command runs so `cxrsynth --help` stays
    fast. This module is the top layer: it may import every other one."""
    if path == ("demo",):
        from cxrsynth.server.demo import command as handler
    elif path == ("data", "phantom"):
        from cxrsynth.data.commands import phantom as handler
    elif path == ("data", "ingest"):
        from cxrsynth.data.commands import ingest as handler
    elif path == ("deid", "run"):
        from cxrsynth.privacy.deid.commands import run as handler
    elif path == ("deid", "eval"):
        from cxrsynth.privacy.deid.commands import evaluate as handler
    elif path == ("deid", "dicom"):
        from cxrsynth.privacy.deid.commands import dicom as handler
    elif path == ("pretrain",):
        from cxrsynth.commands import pretrain as handler
    elif path == ("train",):
        from cxrsynth.commands import train as handler
    elif path == ("fl", "simulate"):
        from cxrsynth.server.simulate import command as handler
    elif path == ("generate",):
        from cxrsynth.commands import generate as handler
    elif path == ("evaluate",):
        from cxrsynth.eval.commands import evaluate as handler
    elif path == ("audit",):
        from cxrsynth.privacy.audit.commands import audit as handler
    elif path == ("release",):
        from cxrsynth.privacy.release import command as handler
    elif path == ("release", "verify"):
        from cxrsynth.privacy.release import verify_command as handler
    elif path == ("release", "key"):
        from cxrsynth.privacy.keys import key_command as handler
    elif path == ("release", "audits"):
        from cxrsynth.privacy.audit.register import command as handler
    else:
        raise KeyError(f"no handler for the command {' '.join(path)}")
    return handler


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        parser = build_parser()
    except CxrError as e:  # a model family named in CXRSYNTH_FAMILIES that cannot be loaded
        print(f"cxrsynth: {e}", file=sys.stderr)
        return e.exit_code
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.path == ("release",) and not (args.synthetic and args.audit and args.out):
        print(
            "cxrsynth release: needs --synthetic, --audit and --out (or `release verify DIR --public-key FILE`).",
            file=sys.stderr,
        )
        return 2
    try:
        handler = resolve(args.path)
        return int(handler(args) or 0)
    except CxrError as e:
        print(f"cxrsynth: {e}", file=sys.stderr)
        return e.exit_code
    except (FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        # A path that names the wrong kind of thing (a folder for a file, a file for a folder) or
        # one we may not touch is bad input wherever a command meets it, not a crash.
        print(f"cxrsynth: {e.filename}: {e.strerror}; check the paths given to the command.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cxrsynth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
