"""Medical terms that look like names or places but are not PHI: eponyms, devices, anatomy shorthand.

A finding from a soft source (the NER model, a capitalised-word rule) that falls inside one of
these terms is dropped, unless a title makes the word a person ("Mr. Foley", "Dr. Swan").
Rule-based identifiers, dates and the per-report deny-list are never dropped: the header says
the word is this patient's name, so it goes even when it is also an eponym (fail closed).
"""

from __future__ import annotations

import re
from functools import lru_cache

KEEP_TERMS: tuple[str, ...] = (
    # eponymous diseases, signs and lines
    "Hodgkin lymphoma",
    "Hodgkin's lymphoma",
    "Hodgkin disease",
    "non-Hodgkin lymphoma",
    "Kerley B lines",
    "Kerley A lines",
    "Kerley lines",
    "Morgagni hernia",
    "Bochdalek hernia",
    "Pancoast tumor",
    "Pancoast tumour",
    "Hampton hump",
    "Westermark sign",
    "Fleischner sign",
    "Fleischner Society",
    "Golden S sign",
    "Luftsichel sign",
    "Kartagener syndrome",
    "Swyer-James syndrome",
    "Macleod syndrome",
    "Wegener granulomatosis",
    "Churg-Strauss",
    "Langerhans cell histiocytosis",
    "Kaposi sarcoma",
    "Ewing sarcoma",
    "Askin tumor",
    "Poland syndrome",
    "Marfan syndrome",
    "Ehlers-Danlos",
    "Lemierre syndrome",
    "Boerhaave syndrome",
    "Mallory-Weiss",
    "Zenker diverticulum",
    "Chilaiditi sign",
    "Rigler sign",
    "Caplan syndrome",
    "Löfgren syndrome",
    "Lofgren syndrome",
    "Mounier-Kuhn",
    "Meigs syndrome",
    "Pott disease",
    "Erdheim-Chester",
    "Castleman disease",
    "Hamman sign",
    "Hamman-Rich",
    "Heimlich valve",
    "Valsalva",
    "Schmorl node",
    "Scheuermann disease",
    "Paget disease",
    "Bankart lesion",
    "Hill-Sachs",
    "Kommerell diverticulum",
    "Ebstein anomaly",
    "Eisenmenger",
    "Fallot",
    "tetralogy of Fallot",
    "Blalock-Taussig shunt",
    "Glenn shunt",
    "Fontan",
    "Wilms tumor",
    "Hashimoto",
    "Graves disease",
    "Crohn disease",
    "Whipple procedure",
    "Nissen fundoplication",
    "Ivor Lewis",
    "Sjogren syndrome",
    "Sjögren syndrome",
    "Behcet",
    "Takayasu arteritis",
    "Lambert-Eaton",
    "Tietze syndrome",
    "Mendelson syndrome",
    "Pickwickian",
    "Cheyne-Stokes",
    "Virchow node",
    "Virchow triad",
    "Swan-Ganz",
    "Swan-Ganz catheter",
    "Swan Ganz catheter",
    "Barrett esophagus",
    "Barrett's esophagus",
    "Ghon focus",
    "Ghon complex",
    "Ranke complex",
    "Schatzki ring",
    "Kussmaul",
    "Horner syndrome",
    "Tietze",
    "Bochdalek hernia",
    # devices and lines
    "Foley catheter",
    "Foley",
    "Dobhoff tube",
    "Dobhoff",
    "Salem sump",
    "Pleurx catheter",
    "PleurX",
    "Port-a-Cath",
    "Mediport",
    "Hickman catheter",
    "Groshong catheter",
    "Quinton catheter",
    "Permcath",
    "Impella",
    "Impella device",
    "ECMO",
    "Heimlich",
    "Blakemore tube",
    "Sengstaken-Blakemore tube",
    "Minnesota tube",
    "Jackson-Pratt drain",
    "Jackson-Pratt",
    "JP drain",
    "Penrose drain",
    "Pigtail catheter",
    "Greenfield filter",
    "Watchman device",
    "MitraClip",
    "Starr-Edwards valve",
    "St. Jude valve",
    "Bjork-Shiley valve",
    "Harrington rods",
    "Luque rods",
    "Kirschner wire",
    "Steinmann pin",
    "Levin tube",
    "Frederick tube",
    "Shiley tube",
    "Montgomery T-tube",
    "PICC",
    "PICC line",
    "LVAD",
    "HeartMate",
    "AICD",
    "ICD",
    "pacemaker",
    "Eustachian valve",
    # anatomy shorthand and named structures
    "right IJ",
    "left IJ",
    "IJ",
    "SVC",
    "IVC",
    "cavoatrial junction",
    "azygos",
    "hemidiaphragm",
    "Morison pouch",
    "sinus of Valsalva",
    "ligament of Treitz",
    "Hilum",
    "Zenker",
    "Bochdalek",
    "Morgagni",
    "Larrey",
    "Adamkiewicz",
    "Kerley",
    "Pancoast",
    "Hodgkin",
    "Fleischner",
    "Westermark",
    "Hampton",
    "Chilaiditi",
    "Rigler",
    "Lemierre",
    # credentials after a name; a general NER model reads "MD" as Maryland
    "MD",
    "M.D.",
    "DO",
    "PhD",
    "RN",
    "NP",
    "PA-C",
    "MBBS",
    "FRCR",
    "FRCPC",
    # scoring systems and criteria
    "Lung-RADS",
    "Brock model",
    "Glasgow Coma Scale",
    "Child-Pugh",
    "Wells score",
    "Berlin criteria",
    "Murray score",
)


def _pattern(term: str) -> str:
    parts = [re.escape(p) for p in re.split(r"[\s]+", term)]
    return r"(?<![A-Za-z])" + r"\s+".join(parts) + r"(?:'s)?(?![A-Za-z])"


TITLE_BEFORE = re.compile(r"(?i)(?:\b(?:mr|mrs|ms|miss|dr|doctor|prof|nurse|sister)\.?\s+)$")


def _first_word(term: str) -> str:
    return re.match(r"[A-Za-z\u00c0-\u024f]+", term).group(0).lower()


@lru_cache(maxsize=1)
def _by_first_word() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for t in set(KEEP_TERMS):
        out.setdefault(_first_word(t), []).append(t)
    return {k: tuple(v) for k, v in out.items()}


@lru_cache(maxsize=512)
def keep_regex(terms: tuple[str, ...] | None = None) -> re.Pattern:
    # longest first, so "Swan-Ganz catheter" wins over "Swan"
    terms = sorted(set(KEEP_TERMS if terms is None else terms), key=len, reverse=True)
    return re.compile("|".join(_pattern(t) for t in terms), re.IGNORECASE)


@lru_cache(maxsize=256)  # called twice per report (findings, then propagated names)
def keep_spans(text: str) -> list[tuple[int, int]]:
    """Where the text holds a medical term (not preceded by a personal title).

    Only the terms whose first word occurs in the text go into the pattern: one alternation of
    all 170 terms tried at every character was a tenth of the time per report."""
    index = _by_first_word()
    words = {w.lower() for w in re.findall(r"[A-Za-z\u00c0-\u024f]+", text)}
    terms = tuple(sorted(t for w in words & index.keys() for t in index[w]))
    if not terms:
        return []
    out = []
    for m in keep_regex(terms).finditer(text):
        if TITLE_BEFORE.search(text[max(0, m.start() - 12) : m.start()]):
            continue
        out.append(m.span())
    return out
