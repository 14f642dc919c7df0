"""Latent quality as in Table 1 of Klug, Sutter and Vogt: a linear classifier per modality subset.

For each subset (F, L, T, LF, FT, LT, LFT) the records are encoded to the mean of the subset's PoE
posterior; a logistic regression fitted on the training records' latents predicts a label on the
test records, scored by average precision. The paper's figures on MIMIC-CXR, label "Finding":
F .467, L .460, T .473, LF .476, FT .493, LT .475, LFT .494, random .235.

    python -m cxrsynth.models.mopoe.probe --checkpoint DIR [--label Finding] [--html PAGE]

prints the table for a checkpoint on the data of its run config (or `--data DIR`), split into
train and holdout as training split it; `--html` also writes a page with generated samples.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrsynth.data.records import LABELS, Record
from cxrsynth.errors import InputError
from cxrsynth.models.mopoe.fusion import BY_NAME, TABLE_ORDER

# Table 1 of Klug, Sutter and Vogt, label "Finding", MoPoE row.
PAPER_FINDING = {"F": 0.467, "L": 0.460, "T": 0.473, "LF": 0.476, "FT": 0.493, "LT": 0.475, "LFT": 0.494}
PAPER_RANDOM = 0.235
# "Finding": any of the 13 findings positive, i.e. the complement of "No Finding" (the paper's label).
FINDING = "Finding"


def probe_targets(records: Sequence[Record], label: str) -> np.ndarray:
    """1/0 per record: `label` positive, or for "Finding", any label but "No Finding" positive."""
    if label == FINDING:
        return np.array([int(any(r.labels.get(n) == 1 for n in LABELS if n != "No Finding")) for r in records])
    if label not in LABELS:
        raise InputError(f"probe label {label!r} is not one of {FINDING!r} or the 14 labels ({', '.join(LABELS)}).")
    return np.array([int(r.labels.get(label) == 1) for r in records])


def _having(records: Sequence[Record], subset: str) -> list[Record]:
    need = BY_NAME[subset]
    has = {
        "frontal": lambda r: r.image is not None,
        "lateral": lambda r: r.lateral is not None,
        "report": lambda r: bool(r.report.strip()),
    }
    return [r for r in records if all(has[m](r) for m in need)]


def linear_probe_table(
    model, train_records: Sequence[Record], test_records: Sequence[Record], label: str = FINDING, seed: int = 0
) -> dict[str, float]:
    """Subset name -> average precision of a linear classifier on that subset's latent means.

    Each subset uses the records that have all of its modalities (studies without a lateral view
    count for F, T and FT only).
    """
    table: dict[str, float] = {}
    for subset in model.probe_subsets():
        train, test = _having(train_records, subset), _having(test_records, subset)
        y_train, y_test = probe_targets(train, label), probe_targets(test, label)
        if len(set(y_train.tolist())) < 2:
            raise InputError(
                f"linear probe, subset {subset}: the {len(train)} training records are all {label} = {y_train[:1].tolist()}; need both classes."
            )
        if y_test.sum() == 0:
            raise InputError(
                f"linear probe, subset {subset}: none of the {len(test)} test records is {label}-positive, so average precision is undefined."
            )
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        clf.fit(model.encode_subset(train, subset), y_train)
        scores = clf.predict_proba(model.encode_subset(test, subset))[:, 1]
        table[subset] = float(average_precision_score(y_test, scores))
    return table


def chance_level(test_records: Sequence[Record], label: str = FINDING) -> float:
    """The average precision of a random classifier: the positive rate (the paper's "random")."""
    return float(probe_targets(test_records, label).mean())


def format_probe_table(table: dict[str, float], label: str = FINDING, random: Optional[float] = None) -> str:
    """The table as text, one column per subset, as Table 1 prints it."""
    return format_probe_rows({label: table}, {label: random} if random is not None else None)


def format_probe_rows(tables: dict[str, dict[str, float]], random: Optional[dict[str, float]] = None) -> str:
    """Several labels' tables as one text table: a row per label, a column per subset."""
    cols = [s for s in TABLE_ORDER if any(s in t for t in tables.values())]
    width = max([12] + [len(k) + 2 for k in tables])
    lines = [
        "linear probe, average precision per subset",
        f"{'label':<{width}}" + "".join(f"{c:>8}" for c in cols) + ("  random" if random else ""),
    ]
    for label, table in tables.items():
        row = f"{label:<{width}}" + "".join(f"{table[c]:>8.3f}" if c in table else f"{'':>8}" for c in cols)
        if random:
            row += f"{random[label]:>8.3f}"
        lines.append(row)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    from cxrsynth.checkpoint import load_checkpoint
    from cxrsynth.errors import CxrError
    from cxrsynth.train import load_run_data

    p = argparse.ArgumentParser(
        prog="python -m cxrsynth.models.mopoe.probe", description="The MoPoE linear-probe table for a checkpoint."
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--label", action="append", help=f"label to predict, repeatable: {FINDING!r} (default) or one of the 14"
    )
    p.add_argument(
        "--data", default=None, help="dataset directory with train/holdout splits (default: the run's data)"
    )
    p.add_argument(
        "--html", default=None, help="also write an HTML page with the table, a chart and generated samples"
    )
    args = p.parse_args(argv)
    try:
        model, cfg, _ = load_checkpoint(args.checkpoint)
        if args.data:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": args.data})})
        records = load_run_data(cfg)
        train = [r for r in records if r.split != "holdout"]
        test = [r for r in records if r.split == "holdout"]
        labels = args.label or [FINDING]
        tables = {label: linear_probe_table(model, train, test, label) for label in labels}
        random = {label: chance_level(test, label) for label in labels}
        print(format_probe_rows(tables, random))
        if args.html:
            from cxrsynth.models.mopoe.page import write_page

            print(f"page: {write_page(args.html, model, tables[labels[0]], labels[0], random[labels[0]], test)}")
    except CxrError as e:
        print(f"probe: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
