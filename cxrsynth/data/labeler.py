"""Rule-based report labeler for the 14 CheXpert / MIMIC-CXR labels.

Follows the CheXpert labeler's three stages (Irvin et al. 2019, "CheXpert", the labeler section): mention extraction,
mention classification (negated / uncertain / positive) and aggregation. A mention is classified by
the nearest negation or uncertainty cue in its clause, before it ("no pneumothorax", "possible
effusion") or after it ("pneumothorax is not seen", "effusion cannot be excluded"). Aggregation per
label: any positive mention -> 1, else any uncertain -> -1, else any negated -> 0, else None.
"No Finding" is 1 when no label other than Support Devices is positive or uncertain and the report
says something normal (a normal phrase, or at least one negated finding); otherwise None, as in
the MIMIC-CXR CheXpert files.
"""

from __future__ import annotations

import functools
import re
from typing import Optional

from cxrsynth.data.records import LABELS
from cxrsynth.data.text import split_sentences

# label -> phrases that mention it. Patterns are matched case-insensitively on whole words.
MENTIONS: dict[str, tuple[str, ...]] = {
    "Atelectasis": (r"atelecta\w*", r"collapse[sd]?", r"volume loss"),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"(?:heart|cardiac silhouette|heart size|cardiac size)(?: is| are| appears?)? (?:\w+ )?enlarged",
        r"enlarge(?:d|ment of the) (?:heart|cardiac silhouette)",
        r"cardiac enlargement",
    ),
    "Consolidation": (r"consolidat\w*",),
    "Edema": (r"edema", r"(?:pulmonary |vascular )+congestion", r"kerley b lines", r"chf", r"fluid overload"),
    "Enlarged Cardiomediastinum": (
        r"enlarged cardiomediastin\w*(?: silhouette| contours?)?",
        r"cardiomediastinal (?:silhouette|contours?) (?:is |are |appears? )?(?:\w+ )?(?:enlarged|widened)",
        r"wide(?:ned|ning of the) (?:upper )?mediastinum",
        r"mediastinal widening",
        r"(?:upper )?mediastinum (?:is |appears? )?(?:\w+ )?widened",
        r"enlarged (?:upper )?mediastinum",
    ),
    "Fracture": (r"fractures?", r"fx"),
    "Lung Lesion": (
        r"nodules?",
        r"nodular opacit\w*",
        r"(?<!soft tissue )mass(?:es)?(?! effect)",
        r"(?:lung |pulmonary )lesions?",
        r"lesions?",
        r"tumou?r",
        r"neoplasm",
    ),
    "Lung Opacity": (r"opacit(?:y|ies)", r"opacification", r"infiltrates?", r"airspace disease", r"haziness"),
    "Pleural Effusion": (
        r"(?<!pericardial )effusions?",
        r"pleural fluid",
        r"(?:blunting|blunted) (?:of )?(?:the )?(?:\w+ )?costophrenic angles?",
        r"costophrenic angles? (?:is |are )?blunted",
    ),
    "Pleural Other": (
        r"pleural thickening",
        r"pleural plaques?",
        r"pleural scarring",
        r"pleural calcifications?",
        r"fibrothorax",
        r"apical cap",
    ),
    "Pneumonia": (r"pneumonias?", r"infectious process", r"infection", r"bronchopneumonia"),
    "Pneumothorax": (r"pneumothora(?:x|ces)", r"ptx"),
    "Support Devices": (
        r"(?:endotracheal|et|nasogastric|ng|enteric|feeding|chest|tracheostomy) tubes?",
        r"ett",
        r"(?:central venous|central|picc|midline|dialysis|ij|internal jugular|subclavian) (?:line|catheter)s?",
        r"catheters?",
        r"picc",
        r"(?:cardiac )?pacemaker",
        r"pacer(?: leads)?",
        r"icd",
        r"swan-ganz catheter",
        r"(?:lines|tubes)(?: (?:and|or) (?:lines|tubes))?",
        r"support devices?",
        r"(?:monitoring|medical) devices?",
        r"sternotomy wires",
    ),
}

# Phrases that state a label is normal; they count as negated mentions.
NORMAL_MENTIONS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        r"(?:heart|cardiac) size (?:is |remains )?(?:within normal limits|normal|top normal)",
        r"normal (?:heart|cardiac) size",
        r"(?:heart|cardiac silhouette|heart size) (?:is |are )?not enlarged",
        r"normal (?:size of the )?(?:heart|cardiac silhouette)",
        r"normal cardiomediastinal (?:silhouette|contours?)",
        r"cardiomediastinal (?:silhouette|contours?) (?:is |are |appears? )?(?:within normal limits|normal|unremarkable)",
    ),
    "Enlarged Cardiomediastinum": (
        r"normal cardiomediastinal (?:silhouette|contours?)",
        r"cardiomediastinal (?:silhouette|contours?) (?:is |are |appears? )?(?:within normal limits|normal|unremarkable)",
        r"mediastin(?:um|al (?:and hilar )?contours?) (?:is |are )?(?:within normal limits|normal|unremarkable|not widened)",
        r"normal mediastin(?:um|al contours?)",
    ),
}

# Cues before a mention. "no" is not a negation when it starts "no change" ("no change in the
# effusion" still reports an effusion), as in the CheXpert pre-negation rules.
_PRE_NEG = (
    r"no(?!\s+(?:(?:significant|interval|appreciable|substantial)\s+)?(?:change|increase|decrease|worsening|improvement))",
    r"without",
    r"negative for",
    r"free of",
    r"clear of",
    r"absence of",
    r"absent",
    r"resolution of",
    r"resolved",
    r"rather than",
    r"ruled out",
    r"not",
    r"nor",
    r"never",
)
_PRE_UNC = (
    r"possible",
    r"possibly",
    r"may",
    r"might",
    r"could",
    r"cannot exclude",
    r"can ?not exclude",
    r"cannot rule out",
    r"can't exclude",
    r"questionable",
    r"question of",
    r"suspicious (?:for|of)",
    r"concerning for",
    r"concern for",
    r"suggestive of",
    r"suggests?",
    r"suggesting",
    r"likely",
    r"probable",
    r"probably",
    r"versus",
    r"vs\.?",
    r"differential(?: diagnosis)? includes?",
    r"equivocal",
    r"borderline",
    r"worrisome for",
    r"rule out",
    r"r/o",
    r"evaluate for",
    r"assess for",
    r"cannot be excluded",
    r"uncertain",
    r"presumed",
)
_POST_NEG = (
    r"(?:is|are|was|were)? ?not (?:seen|identified|present|evident|visualized|appreciated|demonstrated|detected)",
    r"(?:is|are|was|were|has|have)? ?(?:now )?(?:resolved|cleared|absent|gone)",
    r"(?:is|are) no longer (?:seen|present|visible|evident)",
    r"no longer (?:seen|present|visible|evident)",
    r"(?:has|have) been removed",
    r"(?:was|were) removed",
)
_POST_UNC = (
    r"(?:cannot|can ?not|could not|can't) be (?:excluded|ruled out)",
    r"(?:is|are) not (?:excluded|ruled out)",
    r"(?:is|are) (?:possible|suspected|questioned|not excluded|a consideration|in the differential)",
    r"(?:versus|vs\.?)",
    r"(?:may|might|could) be present",
)
# A cue's scope ends at a clause boundary.
_BREAK = r"\b(?:but|however|although|though|while|whereas|except|otherwise|aside from|apart from|and there|there (?:is|are))\b|[;:]"

_NORMAL_CUES = re.compile(
    r"\b(?:normal|unremarkable|no acute|lungs are clear|clear lungs|lungs clear|within normal limits|"
    r"no (?:radiographic )?evidence of (?:acute )?(?:disease|abnormality)|no abnormalit\w+|no focal|no active disease)\b",
    re.I,
)


def _alt(patterns: tuple[str, ...]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


_RE_MENTION = {k: re.compile(rf"\b(?:{_alt(v)})\b", re.I) for k, v in MENTIONS.items()}
_RE_NORMAL = {k: re.compile(rf"\b(?:{_alt(v)})\b", re.I) for k, v in NORMAL_MENTIONS.items()}
_RE_PRE_NEG = re.compile(rf"\b(?:{_alt(_PRE_NEG)})\b", re.I)
_RE_PRE_UNC = re.compile(rf"(?:\b(?:{_alt(_PRE_UNC)})\b)|(?<!\w)\?", re.I)
_RE_POST_NEG = re.compile(rf"^\W*(?:{_alt(_POST_NEG)})\b", re.I)
_RE_POST_UNC = re.compile(rf"^\W*(?:{_alt(_POST_UNC)})\b", re.I)
_RE_BREAK = re.compile(_BREAK, re.I)
_RE_SENT = re.compile(r"(?<=[.!?])\s+|\n+|(?<=\.)(?=[A-Z])")
# How far (characters) a pre-cue reaches: long enough for "no pneumothorax, effusion, or focal
# consolidation", short enough that a cue at the start of a long sentence does not reach its end.
_PRE_REACH = 90
# Words that may sit between a mention and a post-cue ("pneumothorax and effusion are not seen").
_POST_REACH = 60


def _classify(sentence: str, start: int, end: int) -> int:
    """1, 0 or -1 for the mention at sentence[start:end]."""
    before = sentence[max(0, start - _PRE_REACH) : start]
    last_break = None
    for m in _RE_BREAK.finditer(before):
        last_break = m
    if last_break is not None:
        before = before[last_break.end() :]
    best: Optional[tuple[int, int]] = None  # (cue end position, value)
    for regex, value in ((_RE_PRE_NEG, 0), (_RE_PRE_UNC, -1)):
        for m in regex.finditer(before):
            if best is None or m.end() > best[0]:
                best = (m.end(), value)
    after = sentence[end : end + _POST_REACH]
    stop = _RE_BREAK.search(after)
    if stop is not None:
        after = after[: stop.start()]
    # Skip a list of further findings ("pneumothorax or effusion is not seen") up to the verb.
    for cut in range(0, len(after) + 1):
        if cut and after[cut - 1] not in " ,":
            continue
        tail = after[cut:]
        if _RE_POST_UNC.match(tail):
            return -1
        if _RE_POST_NEG.match(tail):
            return 0
        if re.match(r"\s*(?:is|are|was|were|has|have|appears?|seems?)\b", tail, re.I):
            break
    return 1 if best is None else best[1]


def label_report(text: str) -> dict[str, Optional[int]]:
    """Label a report: label name -> 1 (positive), 0 (negative), -1 (uncertain) or None (not mentioned)."""
    found: dict[str, list[int]] = {name: [] for name in LABELS}
    for sentence in _RE_SENT.split(text or ""):
        if not sentence.strip():
            continue
        for name, regex in _RE_NORMAL.items():
            for _ in regex.finditer(sentence):
                found[name].append(0)
        normal_spans = [m.span() for r in _RE_NORMAL.values() for m in r.finditer(sentence)]
        for name, regex in _RE_MENTION.items():
            for m in regex.finditer(sentence):
                if any(s <= m.start() < e for s, e in normal_spans):
                    continue
                found[name].append(_classify(sentence, m.start(), m.end()))
    out: dict[str, Optional[int]] = {}
    for name in LABELS:
        values = found[name]
        out[name] = 1 if 1 in values else -1 if -1 in values else 0 if 0 in values else None
    abnormal = any(out[n] in (1, -1) for n in LABELS if n not in ("No Finding", "Support Devices"))
    normalish = bool(_NORMAL_CUES.search(text or "")) or any(out[n] == 0 for n in LABELS if n != "No Finding")
    out["No Finding"] = 1 if (not abnormal and normalish) else None
    return out


@functools.lru_cache(maxsize=65536)
def states_a_finding(sentence: str) -> bool:
    """True when the labeler reads any finding (positive, negative, uncertain or normal) in the sentence."""
    return any(v is not None for v in label_report(sentence).values())


def finding_sentences(text: str) -> list[str]:
    """The sentences of `text` that state a finding, in order: what the report-writing families
    learn from (sign-offs, comparison lines and identifiers state none)."""
    return [s for s in split_sentences(text or "") if states_a_finding(s)]


__all__ = ["label_report", "states_a_finding", "finding_sentences", "MENTIONS"]
