"""De-identify one report: find PHI, replace it, check the result, or quarantine the report.

Fail closed: an exception, a timeout, an over-long text or header PHI still
present after replacement quarantines the report with a reason that itself holds no PHI.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Optional

from spacy.lang.en.stop_words import STOP_WORDS

from cxrsynth.errors import InputError
from cxrsynth.privacy.deid.config import DeidConfig
from cxrsynth.privacy.deid.engine import build_analyzer, versions
from cxrsynth.privacy.deid.keys import load_secret
from cxrsynth.privacy.deid.lexicon import kind
from cxrsynth.privacy.deid.medical_terms import keep_spans
from cxrsynth.privacy.deid.names import FUNCTION_STOP, _mixed_case
from cxrsynth.privacy.deid.recognizers import ENTITY_TYPES, NON_NAME_WORDS
from cxrsynth.privacy.deid.surrogates import DATE_FORMATS, KEEP_WORDS, Surrogates, redaction_tag

HEADER_FIELDS = {
    "PatientName": "NAME",
    "ReferringPhysicianName": "NAME",
    "PatientID": "ID",
    "AccessionNumber": "ID",
    "PatientBirthDate": "DATE",
}
# Presidio's own entity names -> the project's types.
PRESIDIO_TYPES = {
    "PERSON": "NAME",
    "LOCATION": "LOCATION",
    "EMAIL_ADDRESS": "CONTACT",
    "PHONE_NUMBER": "CONTACT",
    "URL": "CONTACT",
    "IP_ADDRESS": "ID",
    "US_SSN": "ID",
    "CREDIT_CARD": "ID",
}
# Findings from these sources are dropped inside a medical term ("Swan-Ganz", "Kerley B") and when
# they hold only report words.
SOFT_SOURCES = {
    "SpacyRecognizer",
    "UrlRecognizer",
    "name_label_lower",
    "name_relative",
    "name_mid_sentence",
    "hospital",
    "ctx_role",
}
# Rules reading one lower-case word as a name from the word before it ("d/w smith", "dr. smith").
LOWER_CASE_RULES = {"name_label_lower", "name_title_lower"}
# Name findings made from word shape alone (capitals, position); they must also look like a name
# to the census and dictionary lists ("Lung Cancer", "Xray Chest", "CLAVICLE, BETTER" do not).
SHAPE_SOURCES = {"SpacyRecognizer", "name_caps_pair", "name_mid_sentence", "name_credential", "name_initials_signoff"}
# Rules that read a name from its capital letters; in an all-capitals or all-lower-case report
# the capitals say nothing and the context recognizer (names.py) reads names instead.
CAPITAL_RULES = {
    "name_label",
    "name_caps_pair",
    "name_mid_sentence",
    "name_credential",
    "name_initials_signoff",
    "name_title",
}
# Header labels that a name finding swallows from the next field ("Hope; Acc", "ROBERT MARTINEZ MEDICAL").
LABEL_WORDS = frozenset(
    "acc accession loc ext ph tel medical rec record dob mrn study exam name patient pt date".split()
)
# A time written right after a date: "20090916 0438", "11-Mar-2010 0835", "Sep 9 2013 1812 PM".
TIME_AFTER_DATE = re.compile(
    r"[ \t]{1,3}(?:at[ \t]+)?((?:[01]\d|2[0-3])[0-5]\d)(?!\d|[:/.-]\d|[ \t]?(?:mg|ml|cc|cm|mm)\b)"
)
NOT_A_NAME = NON_NAME_WORDS | STOP_WORDS


# Word endings of procedures, conditions and devices; no name in the gold corpus or the census lists
# used for the surrogates ends in them.
MEDICAL_SUFFIX = re.compile(
    r"(?:plasty|ectomy|ostomy|otomy|itis|osis|megaly|graphy|scopy|pathy|plasia|trophy|algia|emia|rrhea|cele|lysis|sclerosis|genic)$"
)


def plausible_name(span: str, mixed: bool, credential: bool = False) -> bool:
    """Whether a shape-based NAME finding reads as a name: a census name that is no dictionary
    word decides yes, a dictionary-only word decides no, and names that are also words ("Rose
    Cross", "Will") pass only when the text's capitals mark them."""
    toks = [
        t for t in re.findall(r"[A-Za-z\u00c0-\u024f][A-Za-z\u00c0-\u024f'-]+", span) if t.lower() not in NOT_A_NAME
    ]
    if not toks:
        return False
    if re.search(r"(?<![A-Za-z])[A-Z]\.(?:\s|$)", span):  # an initial beside a word: "G. Wright"
        toks = toks + ["initial"]
    kinds = [kind(t) if t != "initial" else "name_and_word" for t in toks]
    if credential:  # a credential follows ("Lars D. Delacroix, M.D."): only plain words are refused
        return any(k != "word_only" for k in kinds)
    if "name_only" in kinds:
        return True
    if "word_only" in kinds:
        return False
    capitals = all(t[0].isupper() for t in toks)
    if all(k == "unknown" for k in kinds):
        return (mixed and capitals) or len(toks) >= 2
    return len(toks) >= 2 and (capitals or not mixed)


def _report_word(text: str, f: "Finding") -> bool:
    """A spaCy place that is a report word: one word at the start of a sentence or line
    ("Followup", "Preop", "Lumbar"), a dotted abbreviation ("D.O.B."), a dictionary word, or in a
    mixed-case report an abbreviation in capitals ("IV") or a phrase in small letters ("breath workup")."""
    span = text[f.start : f.end]
    words = re.findall(r"[A-Za-z]+", span)
    if (
        re.fullmatch(r"(?:[A-Za-z]\.){2,}", span.strip())
        or not words
        or all(kind(w) == "word_only" or w.lower() in NOT_A_NAME for w in words)
    ):
        return True
    if _mixed_case(text) and (
        (len(words) == 1 and re.fullmatch(r"[A-Z]{1,3}", span.strip()))  # "IV", not "IN" of an address
        or any(
            w[0].islower() and w not in STOP_WORDS for w in re.findall(r"[A-Za-z][A-Za-z']*", span)
        )  # "breath workup": places have capitals
    ):
        return True
    return len(words) == 1 and bool(re.search(r"(?:^|[.:;!?]\s*|\n\s*)$", text[max(0, f.start - 3) : f.start]))


def _case_mixed_address(span: str) -> bool:
    """An address in any case is written in one case: words in small letters beside a suffix in
    capitals ("0725 comparison chest CT") are report text before a modality, not a street."""
    words = re.findall(r"[A-Za-z]{2,}", span)
    return any(w.isupper() for w in words) and any(w.islower() and len(w) > 2 for w in words)


def _lone_unknown(span: str) -> bool:
    """One word that no name list knows ("Veriphy", "EtOH", "LBOT"): jargon more often than a name."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", span)
    return len(words) == 1 and kind(words[0]) == "unknown"


def _not_a_name(text: str, census_names_pass: bool = False) -> bool:
    """Only report words and function words; with `census_names_pass`, a census name among them
    ("Small" after "per NP", read by the context recognizer) counts as a name."""
    words = re.findall(r"[A-Za-z]+", text.lower())
    if census_names_pass and any(kind(w) in ("name_only", "name_and_word") for w in words):
        return False
    return not words or all(w in NOT_A_NAME or MEDICAL_SUFFIX.search(w) for w in words)


def _plain_word_after(text: str, f: "Finding") -> bool:
    """A lower-case word read as a name from the word before it that is a dictionary word; after
    "per" also one that is a census name too ("per day", "per bones"): "per" is mostly a rate or
    a source, and names after it in any case are read by the context recognizer."""
    k = kind(text[f.start : f.end])
    return k == "word_only" or (
        k == "name_and_word" and bool(re.search(r"(?i)\bper\s+$", text[max(0, f.start - 5) : f.start]))
    )


def _acronyms(span: str, mixed: bool) -> bool:
    """Only abbreviations or jargon in capitals that are no census name ("AGFA PACS", "POD",
    "UNILAT") in a mixed-case report, where a name is written with its capital and small letters."""
    words = re.findall(r"[A-Za-z]+", span)
    return (
        mixed
        and bool(words)
        and all(
            w.isupper() and (len(w) <= 4 or len(words) == 1) and kind(w) in ("unknown", "word_only") for w in words
        )
    )


@dataclass(frozen=True)
class Finding:
    type: str
    start: int
    end: int
    score: float
    source: str = ""


@dataclass
class DeidResult:
    text: Optional[str]
    status: str  # "ok" | "quarantined"
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class ReportTimeout(Exception):
    pass


def _name_tokens(value: str) -> list[str]:
    return [t for t in re.split(r"[\^,\s]+", value) if len(t.strip(".")) >= 2 and re.search(r"[A-Za-z]", t)]


def _parse_header_date(value: str) -> Optional[date]:
    for fmt in ("%Y%m%d", "%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y", "%d/%m/%Y"):
        try:
            return datetime.strptime(value.strip(), fmt).date()
        except ValueError:
            continue
    return None


def _date_variants(d: date) -> set[str]:
    out = set()
    for fmt in DATE_FORMATS:
        if "%Y" not in fmt and "%y" not in fmt:
            continue
        s = d.strftime(fmt)
        out |= {s, s.upper(), re.sub(r"(?<![\d])0(\d)", r"\1", s)}
    return out


def _loose(value: str) -> str:
    """A regex for an identifier written with or without separators ("12345678" ~ "1234-5678")."""
    chars = [re.escape(c) for c in re.sub(r"[\s\-./]", "", value)]
    return r"[\s\-./]?".join(chars)


@dataclass(frozen=True)
class DenyTerm:
    field: str
    type: str
    regex: re.Pattern


def header_deny_terms(meta: Optional[dict], mixed: bool = True) -> list[DenyTerm]:
    """Per-report deny-list from header fields: name words, identifiers, the birth date in many
    forms. `mixed`: the report is in mixed case, so a capital can mark a name."""
    return _deny_terms(tuple(sorted((k, str(v)) for k, v in (meta or {}).items() if k in HEADER_FIELDS)), mixed)


@lru_cache(maxsize=1024)
def _deny_terms(fields: tuple[tuple[str, str], ...], mixed: bool) -> list[DenyTerm]:
    terms: list[DenyTerm] = []
    values = dict(fields)
    for fld, typ in HEADER_FIELDS.items():
        value = values.get(fld, "").strip()
        if not value:
            continue
        if typ == "NAME":
            toks = [fold(t.strip(".")) for t in _name_tokens(value)]
            # A name word that is also a common word ("SMALL^CAROL", "MAY") is matched beside another
            # word of the name in any case, alone only with a capital that marks a name: inside a
            # sentence of a mixed-case report ("seen by Small"), not at a sentence or line start
            # ("Small left effusion", "Short of breath"), not in an all-capitals or all-lower-case
            # report, not inside a hyphenated word ("X-RAY"). The post-replacement check uses the
            # same pattern, so it agrees.
            alts = [rf"{re.escape(a)}[\s,^]+{re.escape(b)}" for a in toks for b in toks if a != b]
            for t in toks:
                if kind(t) in ("name_and_word", "word_only"):
                    if mixed:
                        cap = t[:1].upper() + t[1:].lower()
                        alts.append(rf"(?<=[A-Za-z0-9,)][ \t])(?-i:{re.escape(cap)}|{re.escape(t.upper())})(?!-)")
                else:
                    alts.append(re.escape(t))
        elif typ == "ID":
            alts = [_loose(value)] if len(re.sub(r"\W", "", value)) >= 4 else []
        else:
            d = _parse_header_date(value)
            alts = (
                [re.escape(v) for v in sorted(_date_variants(d), key=len, reverse=True)] if d else [re.escape(value)]
            )
        if alts:
            terms.append(
                DenyTerm(
                    fld, typ, re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(alts) + r")(?![A-Za-z0-9])", re.IGNORECASE)
                )
            )
    return terms


def roster_deny_terms(path) -> list[DenyTerm]:
    """A staff roster (one name a line): the full name in any case, the surname when capitalised."""
    if path is None:
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the roster (setting 'roster_file'): {e}") from None
    full, surnames = [], []
    for line in lines:
        toks = _name_tokens(line.strip())
        if not toks:
            continue
        full.append(r"\s+".join(re.escape(fold(t)) for t in toks))
        if len(toks[-1]) >= 3:
            surnames.append(re.escape(fold(toks[-1][0].upper() + toks[-1][1:].lower())))
    out = []
    if full:
        out.append(
            DenyTerm(
                "roster", "NAME", re.compile(r"(?<![A-Za-z])(?:" + "|".join(full) + r")(?![A-Za-z])", re.IGNORECASE)
            )
        )
    if surnames:
        out.append(DenyTerm("roster", "NAME", re.compile(r"(?<![A-Za-z])(?:" + "|".join(surnames) + r")(?![A-Za-z])")))
    return out


def _name_parts(f: Finding, text: str) -> list[Finding]:
    """A name holds no digits and does not start or end with a label word: a NAME finding that
    swallowed a number or a label ("00527480 HERNANDEZ", "kim  Phone" from the NER model) is cut
    to its name words, so the number keeps its own type and the label stays readable."""
    if (
        f.source == "SpacyRecognizer" and f.type == "LOCATION"
    ):  # a place never crosses a line or a field ("Oak Blvd\nPhone")
        field = re.split(r"\n|[ \t]{2,}|[|;]|[ \t][-\u2013][ \t]", text[f.start : f.end])[0].rstrip()
        return [Finding(f.type, f.start, f.start + len(field), f.score, f.source)] if field.strip() else []
    if f.type != "NAME" or f.source.startswith(("deny:", "ctx_")):  # ctx_: words already chosen by the name lists
        return [f]
    runs, run = [], []
    for m in re.finditer(r"\S+|\n|[ \t]{2,}", text[f.start : f.end]):
        if not m.group(0).strip():  # a name never crosses a line or a field gap: what follows is the next field
            break
        if any(c.isdigit() for c in m.group(0)) or re.match(r"[+=<>#%*&]", m.group(0)):  # "+PPD": no name starts so
            run = []
            continue
        if len(m.group(0).strip(".,;:()[]")) > 1 and m.group(0).strip(".,;:()[]").lower() in FUNCTION_STOP:
            run = []  # "A. Lopez on Jul": a function word parts two findings
            continue
        if not run:
            runs.append(run)
        word = m.group(0)
        if re.fullmatch(r"[A-Za-z]\.", word) and text[f.start + m.end() : f.start + m.end() + 1].isalpha():
            break  # "M." of "M.D.": the credential starts here
        label = (
            "" if re.fullmatch(r"[A-Za-z]\.", word) else word.strip(".,;:()[]").lower().replace(".", "")
        )  # "A." is an initial; "M.D." is "md"
        if (
            label
            and kind(label) in ("name_only", "name_and_word")
            and word[:1].isupper()
            and not word.isupper()
            and label not in FUNCTION_STOP
        ):
            label = (
                ""  # a capitalised census name ("Will", "May") stays in the name; in capitals, capitals say nothing
            )
        run.append((f.start + m.start(), f.start + m.end(), label))
    shape = f.source in SHAPE_SOURCES

    def trimmed(label: str) -> bool:  # shape-based findings also lose plain dictionary words at their ends
        return label in NOT_A_NAME or label in LABEL_WORDS or (shape and bool(label) and kind(label) == "word_only")

    out = []
    for r in runs:
        whole = len(r)
        while r and trimmed(r[0][2]):
            r = r[1:]
        while r and trimmed(r[-1][2]):
            r = r[:-1]
        if f.source == "name_caps_pair" and len(r) < whole:
            continue  # "CHILLS, NONPROD": half a capitals pair is a word, so the pair is no name
        if r:
            out.append(Finding(f.type, r[0][0], r[-1][1], f.score, f.source))
    return out


def fold(text: str) -> str:
    """Accents removed character by character (same length, same offsets): "Inés" -> "Ines"."""
    return "".join(unicodedata.normalize("NFKD", c)[0] if ord(c) > 127 else c for c in text)


MAX_REDRAWS = 8


def _splice(text: str, findings: list[Finding], make) -> tuple[str, list[tuple[int, int, Finding]]]:
    """`text` with each (sorted, non-overlapping) finding replaced by make(type, value), and where
    each replacement landed in the output."""
    parts, placed, pos, n = [], [], 0, 0
    for f in sorted(findings, key=lambda f: f.start):
        parts.append(text[pos : f.start])
        n += f.start - pos
        new = make(f.type, text[f.start : f.end])
        placed.append((n, n + len(new), f))
        parts.append(new)
        n += len(new)
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), placed


def merge(findings: list[Finding], text: str) -> list[Finding]:
    """Overlapping findings become one span (type of the strongest); so do same-type findings
    separated only by a space or a comma ("Rose" "Green" -> "Rose Green")."""
    out: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        joins = (
            out
            and f.start >= out[-1].end
            and f.type == out[-1].type
            and re.fullmatch(r"[ \t,]{1,2}", text[out[-1].end : f.start])
        )
        if out and (f.start < out[-1].end or joins):
            last = out[-1]
            strongest = max((last, f), key=lambda x: (x.score, x.end - x.start))
            out[-1] = Finding(
                strongest.type, last.start, max(last.end, f.end), max(last.score, f.score), strongest.source
            )
        else:
            out.append(f)
    return out


class _Deadline:
    """SIGALRM-based timeout on the main thread; elsewhere the elapsed time is checked afterwards."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def _fire(self, *_):
        raise ReportTimeout()

    def __enter__(self):
        self.t0 = time.perf_counter()
        if self.armed:
            self.old = signal.signal(signal.SIGALRM, self._fire)
            self.old_timer = signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
            delay, interval = self.old_timer
            if delay > 0:  # someone else's alarm (pytest-timeout, a caller's own) is put back
                signal.setitimer(signal.ITIMER_REAL, max(delay - (time.perf_counter() - self.t0), 1e-3), interval)
        return False

    def expired(self) -> bool:
        return time.perf_counter() - self.t0 > self.seconds


class Deidentifier:
    """The on-site de-identifier. Build once (loads spaCy, a few seconds), call per report."""

    def __init__(self, config: Optional[DeidConfig] = None):
        self.config = config or DeidConfig()
        self.analyzer = build_analyzer(self.config)
        self.secret, self.secret_source = load_secret(self.config.secret_file, self.config.ephemeral_secret)
        self.roster = roster_deny_terms(self.config.roster_file)

    def deidentify_dicom(self, ds):
        """A DICOM header per the basic profile with this site's secret: (ds, flags). Dates, when
        shifted (setting `dicom_dates`), move by the same per-patient offset as the report text."""
        from cxrsynth.privacy.deid.dicom import deidentify_dataset

        return deidentify_dataset(
            ds, self.secret, self.config.dicom_dates, self.config.max_shift_days, self.config.dicom_device
        )

    def versions(self) -> dict[str, str]:
        return versions(self.config, self.analyzer)

    def find(
        self, text: str, meta: Optional[dict] = None, deny: Optional[list[DenyTerm]] = None, nlp_artifacts=None
    ) -> list[Finding]:
        """PHI spans in `text` (merged, non-overlapping), using the header deny-list of `meta`."""
        if deny is None:
            deny = header_deny_terms(meta, _mixed_case(text)) + self.roster
        found: list[Finding] = []
        for r in self.analyzer.analyze(
            text, language="en", score_threshold=self.config.score_threshold, nlp_artifacts=nlp_artifacts
        ):
            typ = r.entity_type if r.entity_type in ENTITY_TYPES else PRESIDIO_TYPES.get(r.entity_type)
            if typ is None:
                continue
            meta_r = r.recognition_metadata or {}
            source = meta_r.get("rule") or meta_r.get("recognizer_name", "")
            found.append(Finding(typ, r.start, r.end, float(r.score), source))
        found = [part for f in found for part in _name_parts(f, text)]
        keep = keep_spans(text)
        found = [
            f
            for f in found
            if not (
                f.source in SOFT_SOURCES
                and (
                    any(f.start < b and a < f.end for a, b in keep)
                    or (
                        f.type in ("NAME", "LOCATION")
                        and _not_a_name(text[f.start : f.end], census_names_pass=f.source == "ctx_role")
                    )
                )
            )
            and not (f.source in LOWER_CASE_RULES and _plain_word_after(text, f))
        ]
        mixed = _mixed_case(text)
        found = [
            f
            for f in found
            if not (
                f.type == "NAME"
                and f.source in SHAPE_SOURCES
                and not plausible_name(
                    text[f.start : f.end], mixed, f.source in ("name_credential", "name_initials_signoff")
                )
            )
            and not (f.source == "UrlRecognizer" and not re.search(r"://|www\.", text[f.start : f.end], re.IGNORECASE))
            and not (f.source in CAPITAL_RULES and not mixed)
            and not (
                f.type == "NAME"
                and f.source in SHAPE_SOURCES | CAPITAL_RULES
                and _acronyms(text[f.start : f.end], mixed)
            )
            and not (f.source == "SpacyRecognizer" and f.type == "LOCATION" and _report_word(text, f))
            and not (f.source == "SpacyRecognizer" and f.type == "NAME" and _lone_unknown(text[f.start : f.end]))
            and not (f.source == "street_any_case" and _case_mixed_address(text[f.start : f.end]))
        ]
        dates = [f for f in found if f.type == "DATE"]
        # libphonenumber reads dates as phone numbers ("06-02-2009 10"); the phone rules read phones
        found = [
            f
            for f in found
            if not (f.source == "PhoneRecognizer" and any(d.start < f.end and f.start < d.end for d in dates))
        ]
        for f in list(found):
            if f.type == "DATE":
                m = TIME_AFTER_DATE.match(text, f.end)
                if m:
                    found.append(Finding("TIME", m.start(1), m.end(1), 0.8, "time_after_date"))
        folded = fold(text)
        for term in deny:
            found += [
                Finding(term.type, m.start(), m.end(), 1.0, f"deny:{term.field}") for m in term.regex.finditer(folded)
            ]
        found += self._propagate(text, found)
        return merge(found, text)

    def _propagate(self, text: str, found: list[Finding]) -> list[Finding]:
        """Other mentions of a name found once: its words elsewhere (capitalised or in any case
        when the word is long), its word pairs in any order and case ("MILLER^MAY" -> "May
        Miller"), and user names made from it ("mkowalczyk", "m.kowalczyk"). A word that is also a
        dictionary word ("May", "Lung", "Small") travels only inside such a pair: alone it is
        the ordinary word ("Lung Cancer"). A user name that spells a report word does not travel:
        "Linda Ung" gives "lung", and a city with its state read as a name ("Lincoln, IL") "ill"."""
        words: set[str] = set()
        pairs: set[str] = set()
        user_names: set[str] = set()
        for f in found:
            if f.type != "NAME":
                continue
            raw = [
                t
                for t in re.findall(r"[A-Za-z\u00c0-\u024f][A-Za-z\u00c0-\u024f'-]+", text[f.start : f.end])
                if t.lower() not in KEEP_WORDS
            ]
            toks = [t for t in raw if t.lower() not in NOT_A_NAME]
            words |= {t for t in toks if len(t) >= 3 and kind(t) in ("name_only", "unknown")}
            for a, b in zip(raw, raw[1:]):
                pairs |= {rf"{re.escape(a)}[\s,^]+{re.escape(b)}", rf"{re.escape(b)}[\s,^]+{re.escape(a)}"}
            if len(toks) >= 2:
                first, last = toks[0].lower(), toks[-1].lower()
                user_names |= {
                    first[0] + last,
                    f"{first}.{last}",
                    f"{first[0]}.{last}",
                    first + last[0],
                    last + first[0],
                }
        user_names = {u for u in user_names if kind(u) in ("name_only", "unknown") and u not in NOT_A_NAME}
        if not words and not pairs and not user_names:
            return []
        keep = keep_spans(text)
        alts = "|".join(
            sorted(pairs, key=len, reverse=True)
            + [re.escape(w) for w in sorted(words | user_names, key=len, reverse=True)]
        )
        out = []
        for m in re.finditer(rf"(?<![\w@.])(?:{alts})(?![\w@])", text, re.IGNORECASE):
            if any(m.start() < b and a < m.end() for a, b in keep):
                continue
            pair = bool(re.search(r"[\s,^]", m.group(0)))
            exact = m.group(0) in words or m.group(0).lower() in user_names
            if pair or exact or (m.group(0)[:1].isupper() and len(m.group(0)) >= 4) or len(m.group(0)) >= 6:
                out.append(Finding("NAME", m.start(), m.end(), 0.7, "propagated"))
        return out

    def _replace(
        self, text: str, findings: list[Finding], patient_key: str, deny: list[DenyTerm]
    ) -> tuple[str, list[str]]:
        """(text with each finding replaced, header fields a surrogate still collides with).

        A surrogate must not be the record's own PHI: one that matches a header deny term
        ("Jun" drawn for a date when the patient is called Jun) or repeats a name word or a
        value found in this record is redrawn, up to MAX_REDRAWS times, each draw keyed (the
        same for a site on every run)."""
        if self.config.mode == "redact":
            return _splice(text, findings, redaction_tag)[0], []
        avoid = frozenset(m.group(0) for t in deny for m in t.regex.finditer(text))
        originals = {text[f.start : f.end].lower() for f in findings}
        name_words = {
            w.lower() for f in findings if f.type == "NAME" for w in re.findall(r"[A-Za-z]{3,}", text[f.start : f.end])
        }
        name_words -= KEEP_WORDS
        redraw: dict[tuple[str, str], int] = {}
        for _ in range(MAX_REDRAWS):
            sur = Surrogates(self.secret, patient_key, self.config.max_shift_days, avoid, redraw)
            out, placed = _splice(text, findings, sur.replace)
            folded = fold(out)
            bad: dict[tuple[str, str], str] = {}
            for term in deny:
                for m in term.regex.finditer(folded):
                    for a, b, f in placed:
                        if m.start() < b and a < m.end():
                            bad[(f.type, text[f.start : f.end])] = term.field
            for a, b, f in placed:
                new = out[a:b].lower()
                words = set(re.findall(r"[a-z]{3,}", new)) if f.type == "NAME" else set()
                if new in originals or words & name_words:
                    bad.setdefault((f.type, text[f.start : f.end]), "own PHI")
            if not bad:
                return out, []
            for key in bad:
                redraw[key] = redraw.get(key, 0) + 1
        return out, sorted(set(bad.values()))

    def nlp_batch(self, texts: list[str]) -> list:
        """spaCy run once over many texts (nlp.pipe, much faster than one call per text); each
        result goes to `deidentify_text(..., nlp_artifacts=)`. A text that is not a string or is
        over-long gets None and is refused (quarantined) by `deidentify_text` itself."""
        ok = [i for i, t in enumerate(texts) if isinstance(t, str) and len(t) <= self.config.max_chars]
        out: list = [None] * len(texts)
        try:
            done = self.analyzer.nlp_engine.process_batch([texts[i] for i in ok], "en", batch_size=max(len(ok), 1))
            for i, (_, artifacts) in zip(ok, done):
                out[i] = artifacts
        except Exception:  # fail closed per report: each text is then analysed on its own
            return [None] * len(texts)
        return out

    def deidentify_text(
        self, text: str, meta: Optional[dict] = None, patient_key: Optional[str] = None, nlp_artifacts=None
    ) -> DeidResult:
        t0 = time.perf_counter()

        def quarantine(reason: str, counts: Optional[dict] = None) -> DeidResult:
            return DeidResult(None, "quarantined", reason, counts or {}, time.perf_counter() - t0)

        if not isinstance(text, str):
            return quarantine(f"text is {type(text).__name__}, not a string")
        if len(text) > self.config.max_chars:
            return quarantine(f"over-long text ({len(text)} characters > max_chars {self.config.max_chars})")
        key = patient_key or str((meta or {}).get("PatientID") or "unknown-patient")
        deadline = _Deadline(self.config.timeout_s)
        try:
            with deadline:
                deny = header_deny_terms(meta, _mixed_case(text)) + self.roster
                findings = self.find(text, meta, deny, nlp_artifacts)
                out, collided = self._replace(text, findings, key, deny) if findings else (text, [])
        except ReportTimeout:
            return quarantine(f"timeout after {self.config.timeout_s:g} s")
        except Exception as e:  # fail closed: the message may quote the text, so only the type is kept
            return quarantine(f"error: {type(e).__name__}")
        counts: dict[str, int] = {}
        for f in findings:
            counts[f.type] = counts.get(f.type, 0) + 1
        if deadline.expired():
            return quarantine(f"timeout after {self.config.timeout_s:g} s", counts)
        if collided:
            return quarantine(f"surrogate collision after {MAX_REDRAWS} redraws ({', '.join(collided)})", counts)
        leaked = sorted({t.field for t in deny if t.regex.search(fold(out))})
        if leaked:
            return quarantine(f"header PHI still present after replacement ({', '.join(leaked)})", counts)
        return DeidResult(out, "ok", "", counts, time.perf_counter() - t0)


@lru_cache(maxsize=4)
def cached_deidentifier(config: DeidConfig) -> Deidentifier:
    return Deidentifier(config)


def scan_phi(texts: list[str], config: Optional[DeidConfig] = None) -> list[list[Finding]]:
    """PHI findings per text, for the privacy audit of synthetic reports (no header deny-list).

    A finding carries type, offsets, score and source only; callers must not print or log the
    text under a finding outside the site.
    """
    deid = cached_deidentifier(config or DeidConfig())
    return [deid.find(t) for t in texts]
