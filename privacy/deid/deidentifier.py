"""De-identify one report: find PHI, replace it, check the result, or quarantine the report.

Fail closed (issue 3, item 5): an exception, a timeout, an over-long text or header PHI still
present after replacement quarantines the report with a reason that itself holds no PHI.
"""

from __future__ import annotations

import re
import signal
import unicodedata
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Optional

from presidio_anonymizer import AnonymizerEngine
from spacy.lang.en.stop_words import STOP_WORDS
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult as AnonResult

from cxrsynth.errors import InputError
from privacy.deid.config import DeidConfig
from privacy.deid.engine import build_analyzer, versions
from privacy.deid.keys import load_secret
from privacy.deid.medical_terms import keep_spans
from privacy.deid.recognizers import ENTITY_TYPES, NON_NAME_WORDS
from privacy.deid.surrogates import DATE_FORMATS, Surrogates, redaction_tag

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
# Findings from these sources are dropped inside a medical term ("Swan-Ganz", "Kerley B").
SOFT_SOURCES = {"SpacyRecognizer", "UrlRecognizer", "name_label_lower", "name_relative", "name_mid_sentence", "hospital"}
NOT_A_NAME = NON_NAME_WORDS | STOP_WORDS


# Word endings of procedures, conditions and devices; no name in the gold corpus or the census lists
# used for the surrogates ends in them.
MEDICAL_SUFFIX = re.compile(r"(?:plasty|ectomy|ostomy|otomy|itis|osis|megaly|graphy|scopy|pathy|plasia|trophy|algia|emia|rrhea|cele|lysis|sclerosis|genic)$")


def _not_a_name(text: str) -> bool:
    words = re.findall(r"[A-Za-z]+", text.lower())
    return not words or all(w in NOT_A_NAME or MEDICAL_SUFFIX.search(w) for w in words)


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


def header_deny_terms(meta: Optional[dict]) -> list[DenyTerm]:
    """Per-report deny-list from header fields: name words, identifiers, the birth date in many forms."""
    return _deny_terms(tuple(sorted((k, str(v)) for k, v in (meta or {}).items() if k in HEADER_FIELDS)))


@lru_cache(maxsize=1024)
def _deny_terms(fields: tuple[tuple[str, str], ...]) -> list[DenyTerm]:
    terms: list[DenyTerm] = []
    values = dict(fields)
    for fld, typ in HEADER_FIELDS.items():
        value = values.get(fld, "").strip()
        if not value:
            continue
        if typ == "NAME":
            alts = [re.escape(fold(t.strip("."))) for t in _name_tokens(value)]
        elif typ == "ID":
            alts = [_loose(value)] if len(re.sub(r"\W", "", value)) >= 4 else []
        else:
            d = _parse_header_date(value)
            alts = [re.escape(v) for v in sorted(_date_variants(d), key=len, reverse=True)] if d else [re.escape(value)]
        if alts:
            terms.append(DenyTerm(fld, typ, re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(alts) + r")(?![A-Za-z0-9])", re.IGNORECASE)))
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
        out.append(DenyTerm("roster", "NAME", re.compile(r"(?<![A-Za-z])(?:" + "|".join(full) + r")(?![A-Za-z])", re.IGNORECASE)))
    if surnames:
        out.append(DenyTerm("roster", "NAME", re.compile(r"(?<![A-Za-z])(?:" + "|".join(surnames) + r")(?![A-Za-z])")))
    return out


def _name_parts(f: Finding, text: str) -> list[Finding]:
    """A name holds no digits and does not start or end with a label word: a NAME finding that
    swallowed a number or a label ("00527480 HERNANDEZ", "kim  Phone" from the NER model) is cut
    to its name words, so the number keeps its own type and the label stays readable."""
    if f.type != "NAME" or f.source.startswith("deny:"):
        return [f]
    runs, run = [], []
    for m in re.finditer(r"\S+", text[f.start : f.end]):
        if any(c.isdigit() for c in m.group(0)):
            run = []
            continue
        if not run:
            runs.append(run)
        word = m.group(0)
        label = "" if re.fullmatch(r"[A-Za-z]\.", word) else word.strip(".,;:()").lower()  # "A." is an initial
        run.append((f.start + m.start(), f.start + m.end(), label))
    out = []
    for r in runs:
        while r and r[0][2] in NOT_A_NAME:
            r = r[1:]
        while r and r[-1][2] in NOT_A_NAME:
            r = r[:-1]
        if r:
            out.append(Finding(f.type, r[0][0], r[-1][1], f.score, f.source))
    return out


def fold(text: str) -> str:
    """Accents removed character by character (same length, same offsets): "Inés" -> "Ines"."""
    return "".join(unicodedata.normalize("NFKD", c)[0] if ord(c) > 127 else c for c in text)


def merge(findings: list[Finding], text: str) -> list[Finding]:
    """Overlapping findings become one span (type of the strongest); so do same-type findings
    separated only by a space or a comma ("Rose" "Green" -> "Rose Green")."""
    out: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        joins = out and f.start >= out[-1].end and f.type == out[-1].type and re.fullmatch(r"[\s,]{1,2}", text[out[-1].end : f.start])
        if out and (f.start < out[-1].end or joins):
            last = out[-1]
            strongest = max((last, f), key=lambda x: (x.score, x.end - x.start))
            out[-1] = Finding(strongest.type, last.start, max(last.end, f.end), max(last.score, f.score), strongest.source)
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
        self.anonymizer = AnonymizerEngine()
        self.secret, self.secret_source = load_secret(self.config.secret_file)
        self.roster = roster_deny_terms(self.config.roster_file)

    def deidentify_dicom(self, ds):
        """A DICOM header per the basic profile with this site's secret: (ds, flags). Dates, when
        shifted (setting `dicom_dates`), move by the same per-patient offset as the report text."""
        from privacy.deid.dicom import deidentify_dataset

        return deidentify_dataset(ds, self.secret, self.config.dicom_dates, self.config.max_shift_days)

    def versions(self) -> dict[str, str]:
        return versions(self.config, self.analyzer)

    def find(self, text: str, meta: Optional[dict] = None, deny: Optional[list[DenyTerm]] = None) -> list[Finding]:
        """PHI spans in `text` (merged, non-overlapping), using the header deny-list of `meta`."""
        if deny is None:
            deny = header_deny_terms(meta) + self.roster
        found: list[Finding] = []
        for r in self.analyzer.analyze(text, language="en", score_threshold=self.config.score_threshold):
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
                and (any(f.start < b and a < f.end for a, b in keep) or (f.type in ("NAME", "LOCATION") and _not_a_name(text[f.start : f.end])))
            )
        ]
        folded = fold(text)
        for term in deny:
            found += [Finding(term.type, m.start(), m.end(), 1.0, f"deny:{term.field}") for m in term.regex.finditer(folded)]
        found += self._propagate(text, found)
        return merge(found, text)

    def _propagate(self, text: str, found: list[Finding]) -> list[Finding]:
        """Other mentions of a name found once: its words elsewhere (capitalised or in any case
        when the word is long), and user names made from it ("mkowalczyk", "m.kowalczyk")."""
        words: set[str] = set()
        user_names: set[str] = set()
        for f in found:
            if f.type != "NAME":
                continue
            toks = [t for t in re.findall(r"[A-Za-z\u00c0-\u024f][A-Za-z\u00c0-\u024f'-]+", text[f.start : f.end]) if t.lower() not in NOT_A_NAME]
            words |= {t for t in toks if len(t) >= 3}
            if len(toks) >= 2:
                first, last = toks[0].lower(), toks[-1].lower()
                user_names |= {first[0] + last, f"{first}.{last}", f"{first[0]}.{last}", first + last[0], last + first[0]}
        if not words:
            return []
        keep = keep_spans(text)
        alts = "|".join(re.escape(w) for w in sorted(words | user_names, key=len, reverse=True))
        out = []
        for m in re.finditer(rf"(?<![\w@.])(?:{alts})(?![\w@])", text, re.IGNORECASE):
            if any(m.start() < b and a < m.end() for a, b in keep):
                continue
            exact = m.group(0) in words or m.group(0).lower() in user_names
            if exact or (m.group(0)[:1].isupper() and len(m.group(0)) >= 4) or len(m.group(0)) >= 6:
                out.append(Finding("NAME", m.start(), m.end(), 0.7, "propagated"))
        return out

    def _replace(self, text: str, findings: list[Finding], patient_key: str, deny: list[DenyTerm]) -> str:
        if self.config.mode == "redact":
            make = redaction_tag
        else:
            avoid = frozenset(m.group(0) for t in deny for m in t.regex.finditer(text))
            sur = Surrogates(self.secret, patient_key, self.config.max_shift_days, avoid)
            make = sur.replace
        operators = {t: OperatorConfig("custom", {"lambda": (lambda s, t=t: make(t, s))}) for t in {f.type for f in findings}}
        results = [AnonResult(f.type, f.start, f.end, f.score) for f in findings]
        return self.anonymizer.anonymize(text, results, operators=operators).text

    def deidentify_text(self, text: str, meta: Optional[dict] = None, patient_key: Optional[str] = None) -> DeidResult:
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
                deny = header_deny_terms(meta) + self.roster
                findings = self.find(text, meta, deny)
                out = self._replace(text, findings, key, deny) if findings else text
        except ReportTimeout:
            return quarantine(f"timeout after {self.config.timeout_s:g} s")
        except Exception as e:  # fail closed: the message may quote the text, so only the type is kept
            return quarantine(f"error: {type(e).__name__}")
        counts: dict[str, int] = {}
        for f in findings:
            counts[f.type] = counts.get(f.type, 0) + 1
        if deadline.expired():
            return quarantine(f"timeout after {self.config.timeout_s:g} s", counts)
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
