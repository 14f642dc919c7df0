"""Word lists that tell a name from a word, in any letter case.

Report text is often all capitals or all lower case, so the capital letter that marks a name in
ordinary prose is missing. Two installed word lists stand in for it (nothing is downloaded):

- names: the 1990 US Census lists of given names (5,163) and surnames (88,799, with their rank),
  shipped by the `names` package (public domain data);
- words: Webster's Second International (web2, 235,970 entries) from the `english-words`
  package; its entries keep their case, so "smith" (the trade) is a word and "Johnson" is not.

A token is then `name_only` (a census name that is no lower-case dictionary word: "johnson",
"kimberly"), `name_and_word` ("may", "small", "lung", "rice"), `word_only` ("cancer", "streaky",
"chest") or `unknown` ("stoltzfus", "xray"). Context decides the middle cases.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

# Surnames up to this census rank (of 88,799): 90% of the population; the long tail holds more
# words than names ("heart", "stable", "mass").
SURNAME_MAX_RANK = 30_000

# Clinical words a report uses as ordinary words; some are census names too ("mass", "wall").
CLINICAL_WORDS = frozenset(
    """chest lung lungs heart mass wall clear stable normal size apex base bases lobe lobes hilum hila rib ribs spine
    xray x-ray radiograph radiographs film films view views lateral frontal portable upright supine semi-erect erect
    pa ap ct mri cxr effusion effusions opacity opacities nodule nodules edema pneumonia atelectasis consolidation
    pneumothorax cardiomegaly cancer tumor tumour carcinoma lymphoma metastasis metastases fracture fractures streaky
    patchy focal diffuse mild moderate severe small large left right bilateral upper lower middle mid acute chronic
    prior previous comparison impression findings indication history technique exam examination study report
    clinical procedure reason contour contours silhouette mediastinum mediastinal aorta aortic trachea carina hilar
    pleural pulmonary cardiac vascular vasculature interstitial airspace alveolar granuloma scarring emphysema
    hyperinflation sternotomy catheter tube line lines pacemaker device wire wires clip clips valve stent port
    tip tips degenerative osseous bony bones soft tissue tissues unremarkable unchanged improved worsening new
    negative positive possible probable likely unlikely suspected cough dyspnea fever pain preop postop fall
    asymmetric symmetric asymmetry costophrenic hemidiaphragm diaphragm thoracic lumbar cervical kyphosis scoliosis
    cardiomediastinal calcified calcification calcifications density densities lucency lucent markings marking
    appearance changes change signs sign evidence disease process abnormality abnormalities limits within
    department radiology imaging diagnostic sciences service services network center centre hospital health
    medical regional community memorial general university clinic institute
    male female man woman year years old yo age patient patients pt md do np rn dr doctor nurse resident fellow
    attending radiologist physician provider tech technologist staff""".split()
)


def _data_file(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def given_names() -> frozenset[str]:
    out = set()
    for f in ("dist.male.first", "dist.female.first"):
        out |= {line.split()[0].lower() for line in _data_file("names", f).splitlines() if line.strip()}
    return frozenset(out)


@lru_cache(maxsize=1)
def surnames() -> frozenset[str]:
    out = set()
    for line in _data_file("names", "dist.all.last").splitlines():
        parts = line.split()
        if len(parts) >= 4 and int(parts[3]) <= SURNAME_MAX_RANK:
            out.add(parts[0].lower())
    return frozenset(out)


@lru_cache(maxsize=1)
def dictionary_words() -> frozenset[str]:
    """Lower-case dictionary entries (common nouns, adjectives, verbs), plus the clinical words."""
    from english_words import get_english_words_set

    words = get_english_words_set(["web2"], lower=False, alpha=True)
    return frozenset(w for w in words if w.islower()) | CLINICAL_WORDS


# Combining forms that radiology joins to an anatomical or descriptive word ("biapical",
# "infrahilar", "hyperexpanded", "pleuro-parenchymal"); such compounds are missing from web2.
COMBINING_FORMS = (
    "bi",
    "tri",
    "hemi",
    "semi",
    "mid",
    "peri",
    "para",
    "sub",
    "supra",
    "infra",
    "inter",
    "intra",
    "extra",
    "retro",
    "trans",
    "endo",
    "hyper",
    "hypo",
    "post",
    "pre",
    "non",
    "anti",
    "pan",
    "multi",
    "pseudo",
    "micro",
    "macro",
    "poly",
    "cardio",
    "pleuro",
    "broncho",
    "fibro",
    "costo",
    "thoraco",
    "vaso",
    "neo",
)
# The word after a combining form must be this long, so that a surname no census list holds is not
# read as a form and a short word ("Para|more", "Bi|son") stays unknown.
MIN_COMBINED = 5


def _compound_word(t: str) -> bool:
    """A word built from dictionary words: hyphenated parts that are each a word or a combining
    form ("pleural-parenchymal", "pleuro-parenchymal"), or a combining form and a word of at
    least MIN_COMBINED letters ("biapical"). Only asked of tokens that no list holds."""
    if "-" in t:
        parts = [p for p in t.split("-") if p]
        return len(parts) > 1 and all(p in COMBINING_FORMS or kind(p) == "word_only" for p in parts)
    return any(
        t.startswith(f) and len(t) - len(f) >= MIN_COMBINED and kind(t[len(f) :]) == "word_only"
        for f in COMBINING_FORMS
    )


def _stems(t: str) -> list[str]:
    """Base forms of an inflected word; web2 lists "symptom", not "symptoms" or "began"."""
    out = []
    for suffix, repl in (
        ("ies", "y"),
        ("es", ""),
        ("s", ""),
        ("ed", ""),
        ("ed", "e"),
        ("ing", ""),
        ("ing", "e"),
        ("ly", ""),
        ("ally", "al"),
    ):
        if t.endswith(suffix) and len(t) - len(suffix) >= 3:
            out.append(t[: len(t) - len(suffix)] + repl)
    return out


@lru_cache(maxsize=65536)
def kind(token: str) -> str:
    """'name_only', 'name_and_word', 'word_only' or 'unknown' for one alphabetic token."""
    t = token.lower().strip(".'")
    t = t[:-2] if t.endswith("'s") else t
    base = t.replace("'", "")
    is_name = t in given_names() or t in surnames() or base in surnames()
    is_word = t in dictionary_words() or any(stem in dictionary_words() for stem in _stems(t))
    if is_name:
        return "name_and_word" if is_word else "name_only"
    return "word_only" if is_word or _compound_word(t) else "unknown"


def is_given_name(token: str) -> bool:
    return token.lower().strip(".") in given_names()
