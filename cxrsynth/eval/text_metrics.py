"""Report metrics against references: BLEU-1..4, ROUGE-L and CIDEr-D.

The scores are pycocoevalcap's, the MS-COCO caption evaluation code most report-generation
papers report with: corpus BLEU with the closest reference length for the brevity penalty
(Papineni et al., 2002); ROUGE-L as the LCS F-measure with beta = 1.2, the best over references
(Lin, 2004); CIDEr-D (pycocoevalcap's `Cider` is the D variant: clipped TF-IDF n-gram vectors,
n = 1..4, a Gaussian length penalty with sigma = 6, factor 10; Vedantam et al., 2015, sec. 4),
document frequencies taken from this corpus's reference sets.

Tokens come from `cxrsynth.data.text.tokenize` rather than pycocoevalcap's PTB tokenizer, which
runs Java; METEOR and SPICE need Java too and are not computed.
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from cxrsynth.data.text import tokenize


def _coco_inputs(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """pycocoevalcap's input: {id: [space-joined tokens]} for references and candidates."""
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(tokenize(c))] for i, c in enumerate(candidates)}
    return gts, res


def report_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4 over the corpus, mean ROUGE-L and mean CIDEr-D of candidate reports against their
    references; `references[i]` are the references of `candidates[i]`."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    if not candidates:
        return {}
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"candidate(s) {empty[:5]} have no reference; give each candidate at least one.")
    gts, res = _coco_inputs(candidates, references)
    # BLEU prints its n-gram counts; the terminal gets the results alone.
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider_d"] = float(Cider().compute_score(gts, res)[0])
    out["n"] = len(candidates)
    return out
