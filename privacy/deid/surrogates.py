"""Replacements for PHI: "hide in plain sight" surrogates or typed redaction tags.

Surrogates follow Stubbs et al. 2015 ("hide in plain sight"): realistic values so that residual
PHI a recognizer missed is not singled out by the fake values around it. Names map to names
through a keyed hash of (patient, word), so one person reads the same throughout a patient's
reports; dates move by one offset per patient so intervals between studies survive; identifiers
and phone numbers keep their shape; ages over 89 become "90+" (45 CFR 164.514(b)(2)(i)(C)).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from cxrsynth.privacy.deid.keys import keyed_int, patient_shift_days

# Names that read as first or last names alike, so one mapping serves both positions.
SURROGATE_NAMES = (
    "Avery",
    "Bailey",
    "Blake",
    "Brooks",
    "Cameron",
    "Carter",
    "Casey",
    "Dale",
    "Drew",
    "Ellis",
    "Emerson",
    "Finley",
    "Foster",
    "Gray",
    "Harper",
    "Hayden",
    "Hayes",
    "Hollis",
    "Jordan",
    "Keegan",
    "Kendall",
    "Lane",
    "Lennox",
    "Logan",
    "Marlow",
    "Mason",
    "Merritt",
    "Morgan",
    "Nolan",
    "Oakley",
    "Parker",
    "Payton",
    "Quinn",
    "Reese",
    "Riley",
    "Rowan",
    "Sawyer",
    "Sellers",
    "Shelby",
    "Sutton",
    "Tatum",
    "Taylor",
    "Tierney",
    "Vaughn",
    "Wells",
    "Whitley",
    "Winslow",
    "Wren",
    "Yates",
    "Arden",
    "Bellamy",
    "Corin",
    "Darby",
    "Everly",
    "Fallon",
    "Garnet",
    "Hadley",
    "Ingram",
    "Jessup",
    "Kirby",
    "Linden",
    "Mercer",
    "Norris",
    "Orton",
    "Presley",
    "Radley",
    "Sterling",
    "Thorne",
    "Upton",
    "Vance",
)
SURROGATE_HOSPITALS = (
    "Northfield",
    "Lakeside",
    "Riverbend",
    "Cedar Hill",
    "Westbrook",
    "Harborview Point",
    "Maple Grove",
    "Stonebridge",
)
SURROGATE_CITIES = ("Fairview", "Greenville", "Clinton", "Madison", "Georgetown", "Salem", "Franklin", "Ashland")
SURROGATE_STREETS = ("Elm", "Oak", "Pine", "Maple", "Cedar", "Birch", "Willow", "Chestnut")
KEEP_WORDS = {
    "dr",
    "doctor",
    "mr",
    "mrs",
    "ms",
    "miss",
    "mx",
    "prof",
    "professor",
    "nurse",
    "sister",
    "md",
    "do",
    "phd",
    "rn",
    "np",
    "pa",
    "mbbs",
    "frcr",
    "and",
    "of",
    "the",
    "by",
    "&",
}
TAGS = {
    "NAME": "[NAME]",
    "ID": "[ID]",
    "DATE": "[DATE]",
    "TIME": "[TIME]",
    "AGE": "90+",
    "CONTACT": "[CONTACT]",
    "LOCATION": "[LOCATION]",
}

ORDINAL_RE = re.compile(r"(\d{1,2})(st|nd|rd|th)\b", re.IGNORECASE)
# (format, regex that must match the whole normalised text) - US month-first before day-first.
DATE_FORMATS = (
    "%m/%d/%Y",
    "%m/%d/%y",
    "%d/%m/%Y",
    "%d/%m/%y",
    "%m-%d-%Y",
    "%m-%d-%y",
    "%d-%m-%Y",
    "%d.%m.%Y",
    "%d.%m.%y",
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%Y.%m.%d",
    "%Y%m%d",
    "%d-%b-%Y",
    "%d-%b-%y",
    "%d %b %Y",
    "%d %B %Y",
    "%d%b%Y",
    "%d%b%y",
    "%d %b, %Y",
    "%d %B, %Y",
    "%d of %B %Y",
    "%d of %B, %Y",
    "%d/%b/%Y",
    "%d.%b.%Y",
    "%b %d, %Y",
    "%B %d, %Y",
    "%b %d %Y",
    "%B %d %Y",
    "%b %Y",
    "%B %Y",
    "%B, %Y",
    "%b, %Y",
    "%B of %Y",
    "%m/%Y",
    "%d %b",
    "%d %B",
    "%b %d",
    "%B %d",
    "%m/%d",
    "%d-%b",
    "%d of %B",
)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _match_case(new: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return new.upper()
    if like.islower():
        return new.lower()
    return new


class Surrogates:
    """Replacement values for one patient (`patient_key`), keyed by the site secret."""

    def __init__(
        self,
        secret: bytes,
        patient_key: str,
        max_shift_days: int = 365,
        avoid: frozenset[str] = frozenset(),
        redraw: dict | None = None,
    ):
        self.secret, self.patient = secret, patient_key
        self.base_shift = patient_shift_days(secret, patient_key, max_shift_days)
        self.shift_days = self.base_shift
        self.avoid = {a.lower() for a in avoid}
        # (entity, original) -> how many times its surrogate collided with the record's own PHI;
        # each redraw is again a keyed (reproducible) value, so a site's output stays the same.
        self.redraw = redraw or {}
        self.k = 0

    def _key(self, *key: str) -> tuple[str, ...]:
        return (*key, f"redraw{self.k}") if self.k else key

    def _pick(self, pool: tuple[str, ...], *key: str) -> str:
        start = keyed_int(self.secret, self.patient, *self._key(*key))
        for i in range(len(pool)):
            cand = pool[(start + i) % len(pool)]
            if cand.lower() not in self.avoid and cand.lower() != key[-1].lower():
                return cand
        return pool[start % len(pool)]

    def replace(self, entity: str, text: str) -> str:
        self.k = self.redraw.get((entity, text), 0)
        # a redrawn date moves by whole extra weeks and a month, so month names and years change too
        self.shift_days = self.base_shift + 37 * self.k
        return getattr(self, f"_{entity.lower()}", self._shape)(text)

    def _name(self, text: str) -> str:
        def word(m: re.Match) -> str:
            w = m.group(0)
            if w.lower().rstrip(".") in KEEP_WORDS:
                return w
            if len(w.rstrip(".")) == 1:  # an initial
                letter = chr(ord("A") + keyed_int(self.secret, self.patient, *self._key("initial", w[0].upper())) % 26)
                return _match_case(letter, w[0]) + w[1:]
            return _match_case(self._pick(SURROGATE_NAMES, "name", w.lower()), w)

        out = re.sub(r"[A-Za-z\u00c0-\u024f]+(?:['\u2019-][A-Za-z\u00c0-\u024f]+)*\.?", word, text)
        return re.sub(r"\d+", lambda m: self._shape(m.group(0)), out)  # never pass a number through

    def _date(self, text: str) -> str:
        m = re.fullmatch(r"(?i)(\d{1,2})(st|nd|rd|th)", text.strip())
        if m:  # "the 25th": shift the day of the month, wrapping inside 28 days
            day = (int(m.group(1)) - 1 + (self.shift_days if self.shift_days % 28 else self.shift_days + 1)) % 28 + 1
            return ordinal(day)
        suffix = ORDINAL_RE.search(text)
        norm = ORDINAL_RE.sub(r"\1", text).strip()
        norm = re.sub(r"(?i)\b([a-z]{3,9})\.", r"\1", norm)  # "Mar. 14"
        norm = re.sub(r"\s+", " ", norm)
        norm = re.sub(r"(?i)\bsept\b", "Sep", norm)
        for fmt in DATE_FORMATS:
            try:
                parsed = datetime.strptime(norm, fmt)
            except ValueError:
                continue
            has_year = "%Y" in fmt or "%y" in fmt
            if has_year:
                base = parsed.date()
            else:  # a year-less date: a common year, or the leap year 2000 for 29 February
                base = date(2001 if (parsed.month, parsed.day) != (2, 29) else 2000, parsed.month, parsed.day)
            if "%d" in fmt:
                shifted = base + timedelta(days=self.shift_days)
            else:  # "July 2022": a shift of days could leave month and year as they were; move whole months
                months = int(self.shift_days / 30) or (1 if self.shift_days > 0 else -1)
                y, m = divmod(base.month - 1 + months, 12)
                shifted = date(base.year + y, m + 1, 1)
            out = shifted.strftime(fmt)
            if suffix and "%d" in fmt:
                out = out.replace(shifted.strftime("%d"), ordinal(shifted.day), 1)
            return _match_case(out, re.sub(r"[^A-Za-z]", "", text) or "x")
        return TAGS["DATE"]  # a form we cannot parse is redacted, not kept

    def _time(self, text: str) -> str:
        m = re.match(r"(?i)\s*(\d{1,2})([:h]?)(\d{2})?(.*)", text)
        if not m:
            return TAGS["TIME"]
        minutes = keyed_int(self.secret, self.patient, *self._key("time", text)) % (24 * 60)
        out = self._format_time(minutes, m)
        if out.strip().lower() == text.strip().lower():
            # The draw gave the original back ("10am" as "10am", 1 in 1440 for "5:03 AM"): an hour on.
            out = self._format_time((minutes + 60) % (24 * 60), m)
        return out

    @staticmethod
    def _format_time(minutes: int, m: re.Match) -> str:
        h, mnt = divmod(minutes, 60)
        rest = m.group(4)
        if re.search(r"(?i)[ap]\.?m", rest):
            return f"{(h % 12) or 12}{m.group(2)}{mnt:02d}{rest}" if m.group(3) else f"{(h % 12) or 12}{rest}"
        return f"{h:02d}{m.group(2)}{mnt:02d}{rest}" if m.group(3) else f"{h:02d}{rest}"

    def _age(self, text: str) -> str:
        return re.sub(r"\d+", "90+", text, count=1) if re.search(r"\d", text) else "90+"

    def _contact(self, text: str) -> str:
        if "@" in text:
            return f"contact{keyed_int(self.secret, self.patient, *self._key('email', text.lower())) % 9000 + 1000}@example.org"
        return self._shape(text, keep_letters=True)

    def _location(self, text: str) -> str:
        m = re.search(
            r"(?i)\b(hospital|medical cent(?:er|re)|health cent(?:er|re)|clinic|infirmary|health system|healthcare|memorial|cancer cent(?:er|re)|imaging(?: cent(?:er|re))?)\b",
            text,
        )
        if m:
            return f"{self._pick(SURROGATE_HOSPITALS, 'hospital', text.lower())} {m.group(1)}"
        if re.match(r"\d+\s+[A-Za-z]", text) and re.search(r"[A-Za-z]{3,}", text):
            return f"{keyed_int(self.secret, self.patient, *self._key('street', text)) % 900 + 100} {self._pick(SURROGATE_STREETS, 'street', text.lower())} Street"
        if re.search(r"\d", text):
            return self._shape(text)
        return self._pick(SURROGATE_CITIES, "city", text.lower())

    def _id(self, text: str) -> str:
        return self._shape(text)

    def _shape(self, text: str, keep_letters: bool = False) -> str:
        """Same shape: digits to digits, letters to letters, punctuation kept; keyed on the value."""
        out = []
        for i, ch in enumerate(text):
            k = keyed_int(self.secret, "shape", text, str(i), *self._key())
            if ch.isdigit():
                out.append(str(k % 10))
            elif ch.isalpha() and ch.isascii() and not keep_letters:
                out.append(_match_case(chr(ord("A") + k % 26), ch) if ch.isupper() else chr(ord("a") + k % 26))
            else:
                out.append(ch)
        return "".join(out)


def redaction_tag(entity: str, text: str) -> str:
    if entity == "AGE":
        return re.sub(r"\d+", "90+", text, count=1) if re.search(r"\d", text) else "90+"
    return TAGS.get(entity, "[PHI]")
