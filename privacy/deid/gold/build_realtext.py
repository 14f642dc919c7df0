"""A real-text de-identification corpus from the Indiana University (Open-i) chest X-ray reports.

The IU reports are real radiology text whose source replaced PHI (and many plain words) with
"XXXX". This builder fills each XXXX by its context: a date after "dated"/"comparison", a time
after "at" or before "hours", an age before "-year-old" (ages over 89 are PHI, younger ones are
not), and a clinical word where the sentence needs one ("x-XXXX" -> "x-ray", "pulmonary XXXX").
Around the real text it writes what real reports carry and the IU set stripped: header blocks
(patient name as "LAST, FIRST", "LAST^FIRST", "name: last, first"; MRN, accession and bracketed
IDs; birth dates; ALL-CAPS institution and department lines; street addresses), sentences
naming staff after a role ("discussed with PA ...", "case reviewed with nurse ..."), sign-offs
in many forms and cases ("firstname lastname md / d: 20090916 0438"), and whole reports in
upper case. Names are drawn from pools that include names that are also words (May, Small).

The corpus is never committed: the IU reports are CC BY-NC-ND 4.0, so text derived from them
must not enter the repository. Build it where it is used:

    python -m cxrsynth.privacy.deid.gold.build_realtext build --csv ../shared/data/realcxr/iu_reports.csv --out runs/realtext
    python -m cxrsynth.privacy.deid.gold.build_realtext check --gold runs/realtext/tune.jsonl --show 40
    python -m cxrsynth.privacy.deid.gold.build_realtext check --gold runs/realtext/heldout.jsonl   # figures only

Once a held-out part has been looked at, measure on a fresh one: another seed plants other PHI,
and `--exclude runs/realtext/heldout.jsonl` leaves out the reports already seen (the split by
hash would otherwise put some of them in the new held-out part again).

`build` writes tune.jsonl and heldout.jsonl in the gold format of `cxrsynth deid eval`, with a
`keep` span on every word outside PHI, so "keep spans damaged" counts every non-PHI token a
finding touches. Reports go to the held-out part by a hash of their IU id, and the held-out part
draws its names, hospitals, streets and cities from pools the tune part never uses. `check`
runs the whole pipeline and prints leaks per type, damaged tokens, quarantines and whether two
runs with one site secret give the same text; `--show` (misses and damaged tokens with their
context) is refused on a held-out file, so the rules are never changed by looking at it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import re
import sys
from pathlib import Path

from cxrsynth.data.phantom_report import MONTHS
from cxrsynth.errors import InputError

# --- pools: the tune part uses the first list of each pair, the held-out part the second -------
FIRST = (
    [
        "James",
        "Mary",
        "Robert",
        "Patricia",
        "Michael",
        "Linda",
        "David",
        "Barbara",
        "Richard",
        "Susan",
        "Joseph",
        "Karen",
        "Thomas",
        "Nancy",
        "Charles",
        "Betty",
        "Daniel",
        "Sandra",
        "Matthew",
        "Ashley",
        "Anthony",
        "Kimberly",
        "Donald",
        "Donna",
        "Steven",
        "Carol",
        "Kevin",
        "Michelle",
        "Brian",
        "Amanda",
        "Jose",
        "Maria",
        "Wei",
        "Priya",
        "Ahmed",
        "Fatima",
        "Tyrone",
        "Latoya",
        "Dustin",
        "Brittany",
        "Cody",
        "Heather",
        "May",
        "Will",
        "Rose",
        "Hope",
        "Frank",
        "June",
        "Grant",
    ],
    [
        "William",
        "Elizabeth",
        "John",
        "Jennifer",
        "Christopher",
        "Jessica",
        "Paul",
        "Sarah",
        "Mark",
        "Lisa",
        "George",
        "Deborah",
        "Kenneth",
        "Stephanie",
        "Edward",
        "Rebecca",
        "Ronald",
        "Sharon",
        "Timothy",
        "Laura",
        "Jason",
        "Cynthia",
        "Jeffrey",
        "Kathleen",
        "Ryan",
        "Amy",
        "Jacob",
        "Angela",
        "Gary",
        "Shirley",
        "Luis",
        "Carmen",
        "Hiro",
        "Anjali",
        "Omar",
        "Aaliyah",
        "Darnell",
        "Tiffany",
        "Travis",
        "Crystal",
        "Dawn",
        "Summer",
        "Iris",
        "Faith",
        "Art",
        "Pearl",
        "Joy",
    ],
)
LAST = (
    [
        "Smith",
        "Johnson",
        "Williams",
        "Brown",
        "Jones",
        "Garcia",
        "Miller",
        "Davis",
        "Rodriguez",
        "Martinez",
        "Hernandez",
        "Lopez",
        "Wilson",
        "Anderson",
        "Taylor",
        "Moore",
        "Jackson",
        "Martin",
        "Lee",
        "Thompson",
        "White",
        "Harris",
        "Clark",
        "Lewis",
        "Robinson",
        "Walker",
        "Hall",
        "Allen",
        "King",
        "Wright",
        "Scott",
        "Nguyen",
        "Patel",
        "Kowalski",
        "Schneider",
        "O'Malley",
        "McIntyre",
        "Yoder",
        "Stoltzfus",
        "Hoang",
        "Small",
        "Bell",
        "Young",
        "Wood",
        "Cross",
        "Rice",
        "Hill",
        "Lung",
        "Price",
        "Best",
    ],
    [
        "Gonzalez",
        "Perez",
        "Sanchez",
        "Ramirez",
        "Torres",
        "Flores",
        "Rivera",
        "Gomez",
        "Diaz",
        "Reyes",
        "Morris",
        "Murphy",
        "Cook",
        "Rogers",
        "Morgan",
        "Peterson",
        "Cooper",
        "Reed",
        "Bailey",
        "Kelly",
        "Howard",
        "Ramos",
        "Kim",
        "Cox",
        "Ward",
        "Richardson",
        "Watson",
        "Brooks",
        "Chavez",
        "Bennett",
        "Tran",
        "Shah",
        "Nowak",
        "Fischer",
        "O'Connor",
        "MacDonald",
        "Hostetler",
        "Troyer",
        "Pham",
        "Gray",
        "Long",
        "Moss",
        "Love",
        "Fox",
        "Day",
        "Strong",
        "Stone",
        "Sharp",
        "Black",
        "Short",
    ],
)
HOSPITAL_NAMES = (
    [
        "Methodist",
        "Saint Vincent",
        "St. Francis",
        "Community North",
        "Riverview",
        "Good Samaritan",
        "Mercy",
        "Memorial",
        "Wishard",
        "Clarian",
        "Union",
        "Deaconess",
    ],
    [
        "Eskenazi",
        "Saint Joseph",
        "St. Elizabeth",
        "Community East",
        "Lakeshore",
        "Baptist",
        "Parkview",
        "Bloomington",
        "Hendricks",
        "Columbus Regional",
        "Franciscan",
        "Ball",
    ],
)
HOSPITAL_KINDS = [
    "Hospital",
    "Medical Center",
    "Health",
    "Regional Medical Center",
    "Hospital and Health Center",
    "Health Network",
]
STREETS = (
    ["Main", "Washington", "Meridian", "Market", "Delaware", "Illinois", "Oak", "Maple", "Pennsylvania", "Capitol"],
    ["Michigan", "Ohio", "Senate", "Walnut", "College", "Walnut Ridge", "Cedar", "Elm", "Kessler", "Emerson"],
)
STREET_KINDS = ["St", "Street", "Ave", "Avenue", "Blvd", "Rd", "Road", "Dr", "Drive", "Pkwy"]
CITIES = (
    ["Indianapolis", "Fort Wayne", "Evansville", "Carmel", "Fishers", "Muncie"],
    ["South Bend", "Bloomington", "Lafayette", "Anderson", "Kokomo", "Terre Haute"],
)
STATES = ["IN", "OH", "IL", "KY", "MI"]
ROLES_AFTER = [
    "PA",
    "RN",
    "NP",
    "nurse",
    "resident",
    "Dr.",
    "Dr",
    "fellow",
    "technologist",
    "tech",
    "charge nurse",
    "physician assistant",
]
DEPARTMENTS = [
    "DEPARTMENT OF RADIOLOGY",
    "DIAGNOSTIC IMAGING",
    "DEPARTMENT OF RADIOLOGY AND IMAGING SCIENCES",
    "Radiology Department",
    "RADIOLOGY",
]

# A plain word for an XXXX that stood for one (the source over-redacted): by the word before it.
FILL_AFTER = {
    "pulmonary": "vasculature",
    "x": "ray",
    "aortic": "knob",
    "costophrenic": "angles",
    "the": "bones",
    "no": "signs",
    "normal": "appearance",
    "chest": "radiograph",
    "visualized": "portions",
    "osseous": "structures",
    "bony": "structures",
    "soft": "tissues",
    "heart": "size",
    "with": "changes",
    "of": "atelectasis",
    "and": "vasculature",
    "lungs": "are",
}
FILL_WORDS = [
    "findings",
    "opacities",
    "markings",
    "structures",
    "changes",
    "vasculature",
    "contours",
    "densities",
    "bones",
    "stable",
]
INDICATION_WORDS = [
    "cough",
    "dyspnea",
    "chest pain",
    "fever",
    "shortness of breath",
    "pneumonia",
    "weakness",
    "hypoxia",
    "preop",
    "fall",
]


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class Doc:
    """Text assembled piece by piece with its PHI spans."""

    def __init__(self):
        self.parts: list[str] = []
        self.gold: list[dict] = []
        self.n = 0

    def add(self, text: str, typ: str | None = None) -> "Doc":
        if typ and text:
            self.gold.append({"start": self.n, "end": self.n + len(text), "type": typ})
        self.parts.append(text)
        self.n += len(text)
        return self

    def seq(self, pieces: list) -> "Doc":
        for p in pieces:
            self.add(*p) if isinstance(p, tuple) else self.add(p)
        return self

    def text(self) -> str:
        return "".join(self.parts)


class Phi:
    """PHI values in the forms reports use, for one report; `part` 0 is tune, 1 held-out."""

    def __init__(self, rng: random.Random, part: int):
        self.r, self.p = rng, part
        self.year = rng.randint(2005, 2016)
        self.patient = (rng.choice(FIRST[part]), rng.choice(LAST[part]))
        self.staff = [(rng.choice(FIRST[part]), rng.choice(LAST[part])) for _ in range(3)]
        self.mrn = str(rng.randint(1000000, 99999999))
        self.accession = rng.choice(
            [
                f"{rng.randint(10000000, 99999999)}",
                f"A{rng.randint(1000000, 9999999)}",
                f"RAD-{self.year}-{rng.randint(1000, 99999):05d}",
            ]
        )
        self.birth = (rng.randint(1920, 1995), rng.randint(1, 12), rng.randint(1, 28))

    def c(self, seq):
        return self.r.choice(seq)

    def date_parts(self, year=None):
        return (year or self.year + self.r.randint(-1, 0)), self.r.randint(1, 12), self.r.randint(1, 28)

    def date(self, year=None, partial_ok=True, ymd=None) -> str:
        y, m, d = ymd or self.date_parts(year)
        mon = MONTHS[m - 1]
        forms = [
            f"{m:02d}/{d:02d}/{y}",
            f"{m}/{d}/{y}",
            f"{m}/{d}/{y % 100:02d}",
            f"{y}-{m:02d}-{d:02d}",
            f"{y}{m:02d}{d:02d}",
            f"{d:02d}-{mon[:3]}-{y}",
            f"{d}-{mon[:3].upper()}-{y}",
            f"{mon} {d}, {y}",
            f"{mon[:3]} {d} {y}",
            f"{d} {mon} {y}",
            f"{mon[:3]}. {d}, {y}",
            f"{m:02d}-{d:02d}-{y}",
        ]
        if partial_ok:
            forms += [f"{m}/{d}", f"{mon} {d}", f"{mon} {y}", f"{mon[:3]} {_ordinal(d)}"]
        return self.c(forms)

    def add_date(self, doc: "Doc", year=None) -> None:
        """A date, sometimes as a bare ordinal ("the 22nd": only "22nd" is PHI)."""
        if self.r.random() < 0.06:
            doc.add("the ").add(_ordinal(self.r.randint(1, 28)), "DATE")
        else:
            doc.add(self.date(year), "DATE")

    def time(self) -> str:
        h, mi = self.r.randint(0, 23), self.r.randint(0, 59)
        return self.c(
            [
                f"{h:02d}{mi:02d}",
                f"{h:02d}:{mi:02d}",
                f"{h}:{mi:02d}",
                f"{(h % 12) or 12}:{mi:02d} {'PM' if h >= 12 else 'AM'}",
                f"{(h % 12) or 12}:{mi:02d} {'p.m.' if h >= 12 else 'a.m.'}",
                f"{h:02d}:{mi:02d}:{self.r.randint(0, 59):02d}",
            ]
        )

    def clock(self) -> str:
        """A time in the compact forms written right after a date ("20090916 0438")."""
        h, mi = self.r.randint(0, 23), self.r.randint(0, 59)
        return self.c([f"{h:02d}{mi:02d}", f"{h:02d}:{mi:02d}", f"{h:02d}{mi:02d}"])

    def name(self, who, form=None) -> str:
        f, l = who
        mi = self.c("ABCDEGJKLMRSTW")
        forms = {
            "first last": f"{f} {l}",
            "first mi last": f"{f} {mi}. {l}",
            "last, first": f"{l}, {f}",
            "LAST, FIRST": f"{l.upper()}, {f.upper()}",
            "LAST^FIRST": f"{l.upper()}^{f.upper()}",
            "lower": f"{f.lower()} {l.lower()}",
            "lower last, first": f"{l.lower()}, {f.lower()}",
            "F. last": f"{f[0]}. {l}",
            "last": l,
            "FIRST LAST": f"{f.upper()} {l.upper()}",
            "LAST^FIRST^MI": f"{l.upper()}^{f.upper()}^{mi}",
        }
        return forms[form or self.c(list(forms))]

    def hospital(self, caps=None) -> str:
        name = f"{self.c(HOSPITAL_NAMES[self.p])} {self.c(HOSPITAL_KINDS)}"
        caps = self.r.random() < 0.5 if caps is None else caps
        return name.upper() if caps else name

    def address(self) -> str:
        num = self.r.randint(10, 9999)
        direction = self.c(["", "", "N ", "S ", "E ", "W ", "North ", "East "])
        street = f"{num} {direction}{self.c(STREETS[self.p])} {self.c(STREET_KINDS)}"
        city = f"{self.c(CITIES[self.p])}, {self.c(STATES)} {self.r.randint(46000, 47999)}"
        return self.c([f"{street}, {city}", f"{street}", f"{street}, Suite {self.r.randint(100, 900)}, {city}"])

    def phone(self) -> str:
        a, b, c = self.r.randint(200, 989), self.r.randint(200, 999), self.r.randint(0, 9999)
        return self.c([f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}"])


# Dates and times the source left in clear ("CHEST 2V FRONTAL/LATERAL Sept 21, XXXX", "at 00:46 hours",
# "since Thanksgiving", "fall on the 3rd"):
# PHI of the original record, so gold spans, not report words. A day written as an ordinal is a date
# where the phrase ends with it ("on the 3rd.", "the 22nd of"), as `Phi.add_date` plants it; an
# ordinal with a word or another ordinal after it counts ribs or interspaces ("the 5th, 6th and 7th").
SOURCE_DATE = re.compile(
    r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)[a-z]*\.?\s\d{1,2}\b(?!:)|(?<![\d:])(?:[01]?\d|2[0-3]):[0-5]\d(?![\d:])"
    r"|(?i:\b(?:christmas|thanksgiving|easter|new year's)\b)"
    r"|(?i:(?<=\bthe\s)(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)\b(?=\s*(?:$|[.;:)]|,(?!\s*\d)|(?:of|at)\b)))"
)
# The source's redaction ate the end of "comparison" and wrote a date as two XXXX around a slash.
# Elsewhere it glued XXXX to the word before ("RADXXXX", "XRXXXX").
SOURCE_REPAIRS = (
    (re.compile(r"(?i)\b(comparis)XXXX"), r"\1on XXXX"),
    (re.compile(r"XXXX/XXXX(?![A-Za-z])"), "XXXX"),
    (re.compile(r"(?<=[A-Za-z])XXXX"), " XXXX"),
    (re.compile(r"XXXX(?:th|:\d\d)\b"), "XXXX"),  # "XXXXth", "at XXXX:52": the whole date or time was PHI
)


def add_source(doc: Doc, text: str) -> None:
    """Source text as it is, its clear dates and times marked as PHI."""
    pos = 0
    for m in SOURCE_DATE.finditer(text):
        doc.add(text[pos : m.start()]).add(m.group(0), "TIME" if ":" in m.group(0) else "DATE")
        pos = m.end()
    doc.add(text[pos:])


def fill_xxxx(text: str, column: str, phi: Phi, doc: Doc) -> None:
    """Append `text` to `doc` with each XXXX (or run of them) filled by its context."""
    pos = 0
    for rx, repl in SOURCE_REPAIRS:
        text = rx.sub(repl, text)
    pattern = re.compile(r"XXXX(?:(?P<sep>,?\s)XXXX)*")
    for m in pattern.finditer(text):
        add_source(doc, text[pos : m.start()])
        before = text[max(0, m.start() - 30) : m.start()].lower()
        after = text[m.end() : m.end() + 20].lower()
        runs = m.group(0).count("XXXX")
        prev = re.findall(r"[a-z]+", before)[-1:] or [""]
        prev = prev[0]
        y = phi.year + phi.r.randint(-2, 0)
        if prev in ("dr", "doctor") or before.rstrip().endswith(("Dr.", "Dr")):  # "by Dr. XXXX": a name
            doc.add(phi.name(phi.c(phi.staff), "first last" if runs > 1 else phi.c(["last", "first last"])), "NAME")
            if runs > 2:
                doc.add(" " + " ".join(phi.c(FILL_WORDS) for _ in range(runs - 2)))
        elif re.match(r"-?\s?year", after) or (prev in ("a", "an") and re.match(r"\s?y", after)):
            age = phi.r.randint(91, 103) if phi.r.random() < 0.08 else phi.r.randint(19, 89)
            doc.add(str(age), "AGE" if age > 89 else None)
        elif (
            re.search(r"\b\d\s$", before) and runs == 1 and not re.match(r"\s*(?:hours|hrs|a\.m|p\.m)", after)
        ):  # "2 XXXX": views
            doc.add(phi.c(["views", "images", "views"]))
        elif (
            column in ("comparison", "exam_caption")
            or prev in ("dated", "comparison", "since", "from", "on")
            or before.endswith("comparison ")
        ):
            day = re.search(r"(?<![\d/.:-])([12]\d|3[01]|0?[1-9]) $", text[pos : m.start()])
            if (
                day
                and runs <= 2
                and doc.parts[-1].endswith(day.group(0))
                and not re.match(r"\s*(?:hours|hrs|a\.m|p\.m)", after)
            ):  # "comparison 13 XXXX": the day of a date
                doc.parts[-1] = doc.parts[-1][: len(doc.parts[-1]) - len(day.group(0))]
                doc.n -= len(day.group(0))
                month = MONTHS[phi.r.randint(0, 11)]
                doc.add(
                    f"{day.group(1)} {phi.c([month, month[:3]])}{'' if runs == 1 and phi.r.random() < 0.4 else f' {y}'}",
                    "DATE",
                )
            elif before.endswith("x-") or prev == "x":
                doc.add("ray")
                if runs > 1:
                    doc.add(m.group(0)[4:].replace("XXXX", "").rstrip() + " ")
                    if runs > 2 or not re.match(r"\s*(?:hours|hrs)", after):
                        doc.add(phi.date(y), "DATE")
                    if re.match(r"\s*(?:hours|hrs)", after):  # "x-XXXX, XXXX XXXX hours": date and time
                        doc.add(" " if runs > 2 else "")
                        doc.add(phi.clock().replace(":", ""), "TIME")
            elif re.search(
                r"[A-Z][a-z]{2,4}\.? \d{1,2}, $", text[max(0, m.start() - 12) : m.start()]
            ):  # "Sept 21, XXXX XXXX PM": year, time
                doc.add(str(y), "DATE")
                if runs > 1:
                    h, mi = phi.r.randint(1, 12), phi.r.randint(0, 59)
                    doc.add(" ").add(
                        f"{h}:{mi:02d}"
                        if re.match(r"\s*[AP]M", text[m.end() : m.end() + 4])
                        else f"{h}:{mi:02d} {phi.c(['AM', 'PM'])}",
                        "TIME",
                    )
            elif re.match(r"\s*(?:hours|hrs|a\.m|p\.m)", after) or prev == "at":
                h, mi = phi.r.randint(0, 23), phi.r.randint(0, 59)
                if re.match(r"\s*[ap]\.m", after):
                    doc.add(f"{(h % 12) or 12}:{mi:02d}", "TIME")
                else:
                    doc.add(f"{h:02d}{mi:02d}" if "hour" in after else phi.time(), "TIME")
            elif runs >= 3:  # "XXXX, XXXX XXXX": date, year, time
                ymd = phi.date_parts(y)
                doc.add(
                    phi.c(
                        [
                            f"{MONTHS[ymd[1] - 1]} {ymd[2]}, {ymd[0]}",
                            f"{ymd[1]}/{ymd[2]}/{ymd[0]}",
                            f"{ymd[0]}{ymd[1]:02d}{ymd[2]:02d}",
                            f"{ymd[2]:02d}-{MONTHS[ymd[1] - 1][:3]}-{ymd[0]}",
                        ]
                    ),
                    "DATE",
                )
                doc.add(" ")
                doc.add(phi.clock(), "TIME")
            elif runs == 2:  # "XXXX, XXXX": month and day, year
                ymd = phi.date_parts(y)
                doc.add(
                    phi.c(
                        [
                            f"{MONTHS[ymd[1] - 1]} {ymd[2]}, {ymd[0]}",
                            f"{MONTHS[ymd[1] - 1][:3]} {ymd[2]}, {ymd[0]}",
                            f"{ymd[1]}/{ymd[2]}/{ymd[0]}",
                        ]
                    ),
                    "DATE",
                )
            else:
                phi.add_date(doc, y)
        else:
            words = []
            for _ in range(runs):
                if before.endswith("x-") and not words:
                    words.append("ray")
                elif column == "indication":
                    words.append(phi.c(INDICATION_WORDS))
                else:
                    words.append(FILL_AFTER.get(prev, phi.c(FILL_WORDS)) if not words else phi.c(FILL_WORDS))
            sep = m.group("sep") or " "
            doc.add(sep.join(words))
        pos = m.end()
    add_source(doc, text[pos:])


def header(phi: Phi, doc: Doc, meta: dict) -> None:
    r = phi.r
    if r.random() < 0.5:
        doc.add(phi.hospital(caps=r.random() < 0.7), "LOCATION")
        if r.random() < 0.5:
            doc.add(phi.c([" - ", "\n"])).add(phi.c(DEPARTMENTS))
        doc.add("\n")
        if r.random() < 0.4:
            doc.add(phi.address(), "LOCATION").add("\n")
        if r.random() < 0.3:
            doc.add(phi.c(["Phone: ", "Tel ", "Ph: "])).add(phi.phone(), "CONTACT").add("\n")
    form = phi.c(
        ["LAST, FIRST", "LAST^FIRST", "lower last, first", "first last", "last, first", "FIRST LAST", "LAST^FIRST^MI"]
    )
    label = phi.c(["PATIENT: ", "Patient Name: ", "name: ", "Name: ", "PT: ", "Patient: ", "NAME: "])
    doc.add(label).add(phi.name(phi.patient, form), "NAME")
    sep = phi.c(["   ", "\n", "  |  ", "; "])
    id_form = r.random()
    if id_form < 0.3:
        doc.add(sep + phi.c(["MRN: ", "MEDICAL RECORD #: ", "MR#: ", "Med Rec #: ", "MRN "])).add(phi.mrn, "ID")
    elif id_form < 0.55:
        opening = phi.c(["[", "("])
        doc.add(" " + opening).add(phi.mrn, "ID").add("]" if opening == "[" else ")")
    elif id_form < 0.75:
        opening = phi.c(["[MRN ", "(MRN: ", "[ID: "])
        doc.add(sep + opening).add(phi.mrn, "ID").add("]" if opening[0] == "[" else ")")
    if r.random() < 0.6:
        doc.add(sep + phi.c(["DOB: ", "Date of Birth: ", "D.O.B. ", "dob "]))
        y, m, d = phi.birth
        doc.add(phi.date(ymd=(y, m, d), partial_ok=False), "DATE")
    if r.random() < 0.5:
        doc.add(sep + phi.c(["ACCESSION #: ", "Acc: ", "Accession Number: ", "ACC# "])).add(phi.accession, "ID")
    doc.add("\n")
    if r.random() < 0.5:
        doc.add(phi.c(["EXAM DATE: ", "Date of service: ", "Exam: ", "DATE/TIME: ", "Study date: "]))
        doc.add(phi.date(partial_ok=False), "DATE")
        if r.random() < 0.6:
            doc.add(" ").add(phi.clock(), "TIME")
        doc.add("\n")
    if r.random() < 0.4:
        doc.add(
            phi.c(["Referring physician: ", "REFERRING: ", "Ordering provider: ", "ORDERED BY: ", "referring md: "])
        )
        who = phi.staff[2]
        doc.add(phi.name(who, phi.c(["first last", "LAST, FIRST", "last, first", "lower", "F. last"])), "NAME")
        if r.random() < 0.5:
            doc.add(phi.c([", MD", " MD", ", M.D.", ", DO", " NP"]))
        doc.add("\n")
    if r.random() < 0.3:
        doc.add(phi.c(["Location: ", "Patient location: ", "LOC: "])).add(
            phi.c(["ED", "ICU", "4 West", "Outpatient", "MICU"])
        )
        doc.add("\n")
    if r.random() < 0.5:
        meta["PatientName"] = f"{phi.patient[1].upper()}^{phi.patient[0].upper()}"
        meta["PatientID"] = phi.mrn
        if r.random() < 0.7:
            meta["AccessionNumber"] = phi.accession
        if r.random() < 0.7:
            meta["PatientBirthDate"] = "%04d%02d%02d" % phi.birth
        if r.random() < 0.5:
            meta["ReferringPhysicianName"] = f"{phi.staff[2][1].upper()}^{phi.staff[2][0].upper()}"


def staff_sentence(phi: Phi, doc: Doc) -> None:
    """A sentence naming staff in the body, as reports do for critical results and reviews."""
    who = phi.c(phi.staff[:2])
    role = phi.c(ROLES_AFTER)
    form = phi.c(["first last", "last", "F. last", "lower", "first mi last"])
    forms = [
        [
            phi.c(
                [
                    "These findings were discussed with ",
                    "Findings discussed with ",
                    "Results were called to ",
                    "Critical result communicated to ",
                ]
            ),
            f"{role} ",
            (phi.name(who, form), "NAME"),
            phi.c([" at ", " on ", " by telephone at "]),
            None,
        ],
        [
            phi.c(["Case reviewed with ", "case reviewed with ", "Discussed with ", "I discussed this case with "]),
            (phi.name(who, form), "NAME"),
            phi.c([".", " at the time of dictation.", ", who agrees."]),
        ],
        [
            phi.c(["Per ", "As per ", "According to "]),
            f"{role} ",
            (phi.name(who, phi.c(["first last", "last", "lower"])), "NAME"),
            phi.c([", the patient fell at home.", ", the line was placed today.", ", symptoms began yesterday."]),
        ],
        [
            phi.c(["Wet read by ", "Preliminary interpretation by ", "prelim read by "]),
            (phi.name(who, form), "NAME"),
            " on ",
            None,
        ],
    ]
    pieces = phi.c(forms)
    for p in pieces:
        if p is None:
            if phi.r.random() < 0.5 or doc.parts[-1].endswith(" on "):
                phi.add_date(doc)
                doc.add(" at " if phi.r.random() < 0.5 else " ")
            doc.add(phi.time(), "TIME").add(".")
        elif isinstance(p, tuple):
            doc.add(*p)
        else:
            doc.add(p)


def signoff(phi: Phi, doc: Doc) -> None:
    rad, res = phi.staff[0], phi.staff[1]
    r = phi.r

    def dt(clock=True):
        doc.add(phi.date(partial_ok=False), "DATE")
        if clock:
            doc.add(" ").add(phi.clock(), "TIME")

    form = r.randrange(7)
    if form == 0:  # dictation footer, lower case
        doc.add(phi.name(rad, "lower"), "NAME").add(phi.c([" md", ", md", " m.d.", " do"])).add(
            phi.c([" / d: ", "\nd: ", "  d: "])
        )
        dt()
        doc.add(phi.c([" / t: ", "\nt: ", "  t: "]))
        dt()
    elif form == 1:
        doc.add(
            phi.c(
                [
                    "Electronically signed by: ",
                    "Electronically Signed By: ",
                    "ELECTRONICALLY SIGNED BY: ",
                    "Signed by ",
                ]
            )
        )
        doc.add(phi.name(rad, phi.c(["LAST, FIRST", "first mi last", "first last", "last, first"])), "NAME").add(
            phi.c([" MD", ", MD", ", M.D."])
        )
        doc.add(phi.c([" on ", " ", "\nSigned: "]))
        dt()
    elif form == 2:
        doc.add(
            phi.c(
                [
                    "I have personally reviewed the images and agree with the report above.\n",
                    "Attending attestation: I have reviewed the images and agree.\n",
                ]
            )
        )
        doc.add(phi.c(["Attending: ", "Staff radiologist: ", "ATTENDING: "])).add(
            phi.name(rad, phi.c(["first last", "LAST, FIRST", "F. last"])), "NAME"
        )
        doc.add(phi.c([", MD", " MD", ""])).add("\n")
        doc.add(phi.c(["Resident: ", "Dictated by resident: "])).add(
            phi.name(res, phi.c(["first last", "lower", "last, first"])), "NAME"
        ).add(phi.c([", MD", " MD", ""]))
    elif form == 3:
        doc.add(phi.c(["Dictated by: ", "DICTATED BY: ", "dictated by "])).add(phi.c(["Dr. ", "DR. ", "dr ", ""]))
        doc.add(phi.name(rad, phi.c(["first last", "FIRST LAST", "lower", "last"])), "NAME").add("\n")
        doc.add(phi.c(["Dictated: ", "D: ", "Date dictated: "]))
        dt()
    elif form == 4:
        doc.add(phi.c(["-- ", "/s/ ", "- "])).add(phi.name(rad, phi.c(["first last", "first mi last"])), "NAME").add(
            phi.c([", MD", " M.D.", ""])
        )
        doc.add(phi.c(["\nRadiologist", "\nDiagnostic Radiology", ""]))
    elif form == 5:
        doc.add(phi.c(["Report finalized ", "Finalized: ", "Final report: "]))
        dt()
        doc.add(phi.c([" by ", " - "])).add(phi.name(rad, phi.c(["LAST^FIRST", "LAST, FIRST", "first last"])), "NAME")
    else:
        doc.add(phi.c(["Read by: ", "Interpreted by: ", "Reading radiologist: "])).add(
            phi.name(rad, phi.c(["first last", "last, first", "lower last, first"])), "NAME"
        )
        doc.add(phi.c([" (pager ", ", pager ", ", ext. ", " x"])).add(str(r.randint(1000, 99999)), "CONTACT").add(
            ")" if doc.parts[-2].endswith("(pager ") else ""
        )
    doc.add("\n")


def build_report(row: dict, part: int, seed: int) -> dict:
    rng = random.Random(f"{seed}:{row['uid']}")
    phi = Phi(rng, part)
    doc = Doc()
    meta: dict = {}
    header(phi, doc, meta)
    labels = {
        "exam_caption": ["EXAM: ", "Exam: ", "PROCEDURE: ", "Study: ", ""],
        "indication": ["INDICATION: ", "Indication: ", "CLINICAL HISTORY: ", "History: ", "REASON FOR EXAM: "],
        "comparison": ["COMPARISON: ", "Comparison: ", "PRIOR STUDIES: ", "Prior: "],
        "findings": ["FINDINGS: ", "Findings: ", "FINDINGS:\n", "findings: "],
        "impression": ["IMPRESSION: ", "Impression: ", "IMPRESSION:\n", "CONCLUSION: ", "impression: "],
    }
    body_start = len(doc.parts)
    for col in ("exam_caption", "indication", "comparison", "findings", "impression"):
        text = (row.get(col) or "").strip()
        if not text:
            continue
        doc.add(phi.c(labels[col]))
        fill_xxxx(text, col, phi, doc)
        if col in ("findings", "impression") and rng.random() < 0.35:
            doc.add(" ")
            staff_sentence(phi, doc)
        doc.add("\n")
    if rng.random() < 0.85:
        doc.add("\n")
        signoff(phi, doc)
    text = doc.text()
    if rng.random() < 0.12:  # some systems print the whole report in capitals
        text = text.upper()
    elif rng.random() < 0.1:  # and some sites type everything in lower case
        text = text.lower()
    del body_start
    gold = sorted(doc.gold, key=lambda g: g["start"])
    keep = non_phi_tokens(text, gold)
    return {
        "id": f"iu-{row['uid']}",
        "text": text,
        "meta": meta,
        "gold": gold,
        "keep": keep,
        "part": ("tune", "heldout")[part],
    }


# A time's own affixes ("a.m.", "hours") are part of the time expression, not words of the report.
TIME_AFFIXES = {"a", "m", "p", "am", "pm", "hours", "hrs", "hr", "h"}


def non_phi_tokens(text: str, gold: list[dict]) -> list[dict]:
    """Every word or number outside PHI: each must come through de-identification unchanged."""
    phi = [(g["start"], g["end"]) for g in gold]
    time_ends = {g["end"] for g in gold if g["type"] == "TIME"}
    out = []
    for m in re.finditer(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*", text):
        if any(m.start() < b and a < m.end() for a, b in phi):
            continue
        if m.group(0).lower() in TIME_AFFIXES and any(0 <= m.start() - e <= 2 for e in time_ends):
            time_ends.add(m.end() + (1 if text[m.end() : m.end() + 1] == "." else 0))
            continue
        out.append({"start": m.start(), "end": m.end()})
    return out


def part_of(uid: str) -> int:
    """Held-out (1) for 40% of reports, by a hash of the IU id (stable across runs and machines)."""
    return int(hashlib.sha256(f"realtext-split:{uid}".encode()).hexdigest(), 16) % 10 < 4


def read_ids(paths: list[Path]) -> set[str]:
    """The report ids of built corpus files (reports already looked at, to leave out of a fresh draw)."""
    ids = set()
    for path in paths:
        try:
            ids |= {json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: cannot read the report ids of a built corpus file (--exclude): {e}") from None
    return ids


def build(csv_path: Path, out: Path, n: int, seed: int, exclude: set[str] = frozenset()) -> dict:
    """Draw `n` reports (shuffled by `seed`), leaving out the report ids in `exclude`."""
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise InputError(f"{csv_path}: cannot read the IU reports (--csv): {e.strerror}.") from None
    missing = {"uid", "findings", "impression", "indication", "comparison", "exam_caption"} - set(
        rows[0] if rows else {}
    )
    if missing:
        raise InputError(f"{csv_path}: expected the IU report columns; missing {', '.join(sorted(missing))}.")
    rng = random.Random(seed)
    rows = [r for r in rows if (r["findings"] or r["impression"]).strip()]
    rng.shuffle(rows)
    rows = [r for r in rows if f"iu-{r['uid']}" not in exclude]
    out.mkdir(parents=True, exist_ok=True)
    files = {
        0: (out / "tune.jsonl").open("w", encoding="utf-8"),
        1: (out / "heldout.jsonl").open("w", encoding="utf-8"),
    }
    counts = {0: [0, 0], 1: [0, 0]}
    for row in rows[:n]:
        part = int(part_of(row["uid"]))
        rep = build_report(row, part, seed)
        files[part].write(json.dumps(rep, ensure_ascii=False) + "\n")
        counts[part][0] += 1
        counts[part][1] += len(rep["gold"])
    for f in files.values():
        f.close()
    return {
        "tune": {"reports": counts[0][0], "phi_spans": counts[0][1]},
        "heldout": {"reports": counts[1][0], "phi_spans": counts[1][1]},
    }


def check(gold_path: Path, show: int, secret_file: Path | None, workers: int) -> dict:
    """The whole pipeline on a built file: leaks per type, damaged tokens, quarantines, reproducibility."""
    from cxrsynth.privacy.deid.batch import DeidItem, deidentify_batch
    from cxrsynth.privacy.deid.config import DeidConfig
    from cxrsynth.privacy.deid.deidentifier import Deidentifier
    from cxrsynth.privacy.deid.evaluate import read_gold, score

    if show and "heldout" in gold_path.name:
        raise InputError(
            f"{gold_path}: --show prints the texts of misses; it is refused on a held-out file so rules are never tuned on it."
        )
    rows = read_gold(gold_path)
    config = DeidConfig(secret_file=secret_file)
    deid = Deidentifier(config)
    findings = [deid.find(r["text"], r.get("meta") or None) for r in rows]
    res = score(rows, findings)
    items = [DeidItem(r["id"], r["text"], r.get("meta") or {}, (r.get("meta") or {}).get("PatientID")) for r in rows]
    first = deidentify_batch(items, config, workers=workers)
    second = (
        [Deidentifier(config).deidentify_text(it.text, it.meta or None, it.patient_key) for it in items]
        if secret_file
        else None
    )
    reasons: dict[str, int] = {}
    for r in first:
        if r.status != "ok":
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    summary = {
        "reports": len(rows),
        "phi_spans": res["overall"]["gold"],
        "leaked": res["overall"]["gold"] - res["overall"]["found"],
        "leak_rate": 1 - res["overall"]["recall"],
        "leak_rate_per_type": {
            t: {"spans": s["gold"], "leaked": s["gold"] - s["found"], "rate": round(1 - s["recall"], 4)}
            for t, s in res["per_type"].items()
            if s["gold"]
        },
        "non_phi_tokens": res["keep_spans"],
        "non_phi_tokens_changed": res["keep_damaged"],
        "precision": res["overall"]["precision"],
        "quarantined": reasons,
        "same_output_twice": None if second is None else all(a.text == b.text for a, b in zip(first, second)),
    }
    if show:
        by_id = {r["id"]: r for r in rows}
        print("--- missed PHI (type | span | context)")
        for miss in res["missed"][:show]:
            t = by_id[miss["id"]]["text"]
            print(
                f"{miss['type']:8} | {t[miss['start'] : miss['end']]!r} | {t[max(0, miss['start'] - 40) : miss['end'] + 30]!r}"
            )
        print("--- changed non-PHI tokens")
        shown = 0
        for row, found in zip(rows, findings):
            for k in row["keep"]:
                if shown < show and any(f.start < k["end"] and k["start"] < f.end for f in found):
                    f = next(f for f in found if f.start < k["end"] and k["start"] < f.end)
                    print(
                        f"{row['text'][k['start'] : k['end']]!r:20} by {f.type}/{f.source}: {row['text'][max(0, f.start - 30) : f.end + 20]!r}"
                    )
                    shown += 1
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write tune.jsonl and heldout.jsonl (never into the repository)")
    b.add_argument("--csv", required=True, type=Path, help="iu_reports.csv")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--n", type=int, default=600, help="reports to draw (about 40%% go to the held-out part)")
    b.add_argument("--seed", type=int, default=18)
    b.add_argument(
        "--exclude",
        type=Path,
        nargs="+",
        action="extend",  # "--exclude a --exclude b" adds b; the default action would drop a
        default=[],
        help="built files whose reports are left out (held-out parts already looked at); several files, or the option repeated",
    )
    c = sub.add_parser("check", help="run the pipeline on a built file and print the figures")
    c.add_argument("--gold", required=True, type=Path)
    c.add_argument(
        "--show", type=int, default=0, help="print this many misses and damaged tokens (refused on held-out files)"
    )
    c.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        help="site secret; with one, the file is de-identified twice and compared",
    )
    c.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            repo = Path(__file__).resolve().parents[3]
            if args.out.resolve().is_relative_to(repo) and not args.out.resolve().is_relative_to(repo / "runs"):
                raise InputError(
                    f"{args.out}: the corpus holds CC BY-NC-ND text and must stay out of the repository; write it under runs/ (ignored by git) or outside."
                )
            print(json.dumps(build(args.csv, args.out, args.n, args.seed, read_ids(args.exclude))))
        else:
            print(json.dumps(check(args.gold, args.show, args.secret_file, args.workers), indent=1))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
