"""Writes the de-identification gold corpus: tune.jsonl (for tuning) and heldout.jsonl (never tuned on).

Reports are assembled from hand-written sentence forms seen in real radiology practice (sign-off
blocks, "d/w Dr. X at 14:32", CC lines, MRN/accession shapes, international date forms), with the
PHI and the medical terms that must survive annotated as they are placed. A share of the sentence
forms and of the name, hospital and city pools is reserved for the held-out part, so held-out
scores measure forms the rules were not tuned on. heldout_b.jsonl holds only hand-written reports
written after the last rule change. Independent of the phantom data generator.

    python -m cxrsynth.privacy.deid.gold.build_gold   # rewrites the two files (seeded, deterministic)
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from cxrsynth.data.phantom_report import MONTHS

HERE = Path(__file__).parent

FIRST = [
    "James",
    "Maria",
    "Wei",
    "Aisha",
    "Olusegun",
    "Priya",
    "Dmitri",
    "Sofia",
    "Hiroshi",
    "Fatima",
    "Liam",
    "Chloe",
    "Mateo",
    "Ngozi",
    "Kwame",
    "Ingrid",
    "Rajesh",
    "Yuki",
    "Siobhan",
    "Tomasz",
    "Elena",
    "Omar",
    "Grace",
    "Arjun",
    "Beatriz",
    "Kenji",
    "Amara",
    "Lars",
    "Mei",
    "Diego",
    "Hannah",
    "Bartholomew",
    "Eun-ji",
    "Jean-Luc",
    "Zainab",
    "Patrick",
    "Nadia",
    "Oluwaseun",
    "Carmen",
    "Viktor",
    "Leah",
    "Samuel",
    "Rosa",
    "Farid",
    "Agnieszka",
    "Thabo",
]
LAST = [
    "Okafor",
    "Nguyen",
    "Kowalski",
    "Fernandez",
    "O'Brien",
    "Schmidt",
    "Tanaka",
    "Haddad",
    "Patel",
    "Ivanova",
    "McAllister",
    "Garcia-Lopez",
    "Johansson",
    "Mbeki",
    "Rossi",
    "Chen",
    "Abernathy",
    "Dubois",
    "Kaur",
    "Yamamoto",
    "Fitzgerald",
    "Oyelaran",
    "Novak",
    "Castellanos",
    "Lindqvist",
    "Achebe",
    "Moreau",
    "Bianchi",
    "Kim",
    "Wojcik",
    "Delacroix",
    "Hernandez",
    "Sullivan",
    "Adeyemi",
    "Petrov",
    "MacKenzie",
    "Van der Berg",
    "Whitfield",
    "Brennan",
    "Santiago",
    "Okonkwo",
    "Halvorsen",
    "Ramirez",
    "Goldberg",
    "Costa",
    "Nakamura",
    "Young",
    "Park",
    "Rahman",
]
HELD_FIRST = [
    "Tobias",
    "Anouk",
    "Chidi",
    "Marisol",
    "Sven",
    "Imani",
    "Rafael",
    "Keiko",
    "Declan",
    "Yasmin",
    "Bogdan",
    "Lucia",
]
HELD_LAST = [
    "Ferreira",
    "Oduya",
    "Szabo",
    "Lindgren",
    "Achterberg",
    "Quintero",
    "Mwangi",
    "Takahashi",
    "Gallagher",
    "Bergstrom",
    "Novotny",
    "Ashworth",
]
HOSPITALS = [
    "St. Mary's Hospital",
    "Riverside Medical Center",
    "Kingston General Hospital",
    "Mercy Health Center",
    "Lakeview Community Hospital",
    "Saint Vincent Infirmary",
    "Northshore University Hospital",
    "Good Samaritan Hospital",
    "Royal Brompton Hospital",
    "Cedars Valley Clinic",
    "Pinecrest Cancer Center",
    "Bayview Children's Hospital",
]
HELD_HOSPITALS = [
    "Mount Hermon Medical Centre",
    "Ashford Memorial Hospital",
    "Glenwood Rehabilitation Center",
    "Hospital of Saint Anne",
]
CITIES = [
    "Springfield",
    "Boston",
    "Toronto",
    "Manchester",
    "Lyon",
    "Houston",
    "Denver",
    "Phoenix",
    "Chicago",
    "Atlanta",
]
HELD_CITIES = ["Leeds", "Sacramento", "Ottawa", "Edinburgh"]
STREETS = ["Maple Avenue", "Oak Street", "Harbor Road", "Elm Drive", "Kingsway Boulevard", "Cedar Lane", "Birch Court"]
STATES = ["MA", "NY", "TX", "CA", "IL", "OH", "GA"]
RELATIVES = ["wife", "husband", "daughter", "son", "sister", "brother", "mother", "niece", "partner", "caregiver"]

KEEP_SENTENCES = [
    "Swan-Ganz catheter tip projects over the right main pulmonary artery.",
    "Foley catheter noted in the bladder.",
    "Kerley B lines at the lung bases, consistent with interstitial edema.",
    "Known Hodgkin lymphoma, status post chemotherapy.",
    "Findings compatible with a Morgagni hernia.",
    "Apical mass concerning for Pancoast tumor.",
    "Right IJ central venous catheter terminates in the SVC.",
    "Left PICC line with tip at the cavoatrial junction.",
    "Dobhoff tube courses below the diaphragm.",
    "Westermark sign is not present.",
    "Hampton hump configuration of the peripheral opacity.",
    "Heimlich valve attached to the chest tube.",
    "Impella device in expected position.",
    "Jackson-Pratt drain overlies the right upper quadrant.",
    "Bochdalek hernia containing fat, unchanged.",
    "Port-a-Cath reservoir in the left chest wall.",
    "Greenfield filter in the IVC.",
    "Fleischner Society guidelines recommend follow-up CT in 6 to 12 months.",
    "No Golden S sign.",
    "Harrington rods along the thoracolumbar spine.",
    "Salem sump tube tip in the gastric body.",
    "History of non-Hodgkin lymphoma.",
    "Pleurx catheter in the left pleural space.",
    "Sengstaken-Blakemore tube in place.",
    "Kaposi sarcoma lesions cannot be excluded.",
    "Status post Nissen fundoplication.",
    "Status post Ivor Lewis esophagectomy.",
    "Chilaiditi sign with colon interposed beneath the right hemidiaphragm.",
]
KEEP_WORDS = [
    "Swan-Ganz catheter",
    "Foley catheter",
    "Kerley B lines",
    "Hodgkin lymphoma",
    "Morgagni hernia",
    "Pancoast tumor",
    "Right IJ",
    "PICC",
    "Dobhoff tube",
    "Westermark sign",
    "Hampton hump",
    "Heimlich valve",
    "Impella device",
    "Jackson-Pratt drain",
    "Bochdalek hernia",
    "Port-a-Cath",
    "Greenfield filter",
    "Fleischner Society",
    "Golden S sign",
    "Harrington rods",
    "Salem sump",
    "non-Hodgkin lymphoma",
    "Pleurx catheter",
    "Sengstaken-Blakemore tube",
    "Kaposi sarcoma",
    "Nissen fundoplication",
    "Ivor Lewis",
    "Chilaiditi sign",
]
PLAIN_FINDINGS = [
    "The lungs are clear.",
    "No focal consolidation, pleural effusion or pneumothorax.",
    "Heart size is normal.",
    "Mild cardiomegaly, stable.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Healed fracture of the left 5th rib.",
    "Degenerative changes at T10 through T12.",
    "Endotracheal tube 4 cm above the carina.",
    "NG tube tip below the GE junction, 10 cm into the stomach.",
    "Patchy opacity in the right lower lobe, 2.3 x 1.8 cm.",
    "Interval improvement since the prior study 3 days ago.",
    "Calcified granuloma in the left upper lobe, unchanged since 2015.",
    "No acute osseous abnormality.",
    "Mediastinal contours are within normal limits.",
    "Sternotomy wires are intact.",
    "Trace fluid in the fissure.",
    "Bibasilar atelectasis, left greater than right.",
    "The 4th and 5th ribs on the right are fractured.",
    "Pain 7/10 per the requisition.",
    "Lines and tubes as above.",
    "Level 2 trauma activation.",
]


class Builder:
    """Accumulates text with annotated spans."""

    def __init__(self):
        self.parts: list[str] = []
        self.gold: list[dict] = []
        self.keep: list[dict] = []
        self.n = 0

    def add(self, text: str, typ: str | None = None) -> None:
        if typ == "KEEP":
            self.keep.append({"start": self.n, "end": self.n + len(text)})
        elif typ:
            self.gold.append({"start": self.n, "end": self.n + len(text), "type": typ})
        self.parts.append(text)
        self.n += len(text)

    def text(self) -> str:
        return "".join(self.parts)


class Gen:
    """Random PHI values in varied forms; `held` switches to the held-out pools."""

    def __init__(self, rng: random.Random, held: bool):
        self.r = rng
        self.first = FIRST[: len(FIRST) * 2 // 3] + (HELD_FIRST if held else FIRST[len(FIRST) * 2 // 3 :])
        self.last = LAST[: len(LAST) * 2 // 3] + (HELD_LAST if held else LAST[len(LAST) * 2 // 3 :])
        self.hospitals = HOSPITALS + (HELD_HOSPITALS if held else [])
        self.cities = CITIES + (HELD_CITIES if held else [])

    def person(self):
        return self.r.choice(self.first), self.r.choice(self.last)

    # each form: list of (text, type|None)
    def doctor(self) -> list:
        f, l = self.person()
        m = self.r.choice("ABCDEJKLMRST")
        forms = [
            [("Dr. ", None), (l, "NAME")],
            [("Dr ", None), (f"{f} {l}", "NAME")],
            [(f"{f} {l}", "NAME"), (", MD", None)],
            [(f"{f} {m}. {l}", "NAME"), (", M.D.", None)],
            [(f"{f[0]}. {l}", "NAME"), (", MD", None)],
            [("dr ", None), (l.lower(), "NAME")],
            [(f"{l}, {f}", "NAME"), (" MD", None)],
            [(f"{f} {l}", "NAME"), (", DO", None)],
            [("Dr. ", None), (f"{f[0]}. {l}", "NAME")],
            [(f"{l.upper()}, {f.upper()}", "NAME")],
            [(f"{f} {l}", "NAME"), (", PA-C", None)],
            [(f"{f} {l}", "NAME"), (" MBBS FRCR", None)],
        ]
        return self.r.choice(forms)

    def patient_name(self, f, l) -> list:
        return self.r.choice(
            [
                [(f"{l.upper()}, {f.upper()}", "NAME")],
                [(f"{f} {l}", "NAME")],
                [(f"{l}, {f}", "NAME")],
                [("Mr. " if self.r.random() < 0.5 else "Mrs. ", None), (l, "NAME")],
                [("Ms. ", None), (f"{f} {l}", "NAME")],
            ]
        )

    def relative(self) -> list:
        f, _ = self.person()
        rel = self.r.choice(RELATIVES)
        return self.r.choice(
            [
                [(f"Patient's {rel} ", None), (f, "NAME"), (" at bedside.", None)],
                [(f"History obtained from {rel} (", None), (f, "NAME"), (").", None)],
                [(f"Per {rel}, ", None), (f, "NAME"), (", symptoms began yesterday.", None)],
            ]
        )

    def date(self, year_required: bool = False) -> str:
        y, mo, d = self.r.randint(2012, 2024), self.r.randint(1, 12), self.r.randint(1, 28)
        mon = MONTHS[mo - 1]
        forms = [
            f"{mo:02d}/{d:02d}/{y}",
            f"{mo}/{d}/{y}",
            f"{mo}/{d}/{y % 100:02d}",
            f"{d:02d}-{mon[:3]}-{y}",
            f"{d}{mon[:3].upper()}{y}",
            f"{d:02d}.{mo:02d}.{y}",
            f"{y}-{mo:02d}-{d:02d}",
            f"{mon} {d}, {y}",
            f"{mon[:3]} {d} {y}",
            f"{d} {mon} {y}",
            f"{d}/{mo}/{y}" if d > 12 else f"{d:02d}/{mo:02d}/{y}",
            f"{mon[:3]}. {d}, {y}",
            f"{d}{'th' if d not in (1, 2, 3, 21, 22, 23) else {1: 'st', 2: 'nd', 3: 'rd', 21: 'st', 22: 'nd', 23: 'rd'}[d]} of {mon} {y}",
            f"{y}{mo:02d}{d:02d}",
        ]
        if not year_required:
            forms += [f"{mon} {d}", f"{mon[:3]} {d}", f"{mo}/{d}", f"{mon} {y}"]
        return self.r.choice(forms)

    def time(self) -> str:
        h, m = self.r.randint(0, 23), self.r.randint(0, 59)
        return self.r.choice(
            [
                f"{h:02d}:{m:02d}",
                f"{h}:{m:02d}",
                f"{h:02d}{m:02d} hrs",
                f"{(h % 12) or 12}:{m:02d} {'PM' if h >= 12 else 'AM'}",
                f"{h:02d}:{m:02d}:{self.r.randint(0, 59):02d}",
                f"{(h % 12) or 12}{'pm' if h >= 12 else 'am'}",
            ]
        )

    def mrn(self) -> list:
        n = self.r
        return n.choice(
            [
                [("MRN: ", None), (f"{n.randint(1000000, 99999999)}", "ID")],
                [("MR# ", None), (f"{n.randint(0, 999999):08d}", "ID")],
                [("Med Rec No. ", None), (f"{n.randint(100, 999)}-{n.randint(10, 99)}-{n.randint(10, 99)}", "ID")],
                [("Unit No.: ", None), (f"{n.randint(1000000, 9999999)}", "ID")],
                [("Patient ID ", None), (f"E{n.randint(1000000, 9999999)}", "ID")],
                [("MRN ", None), (f"{n.randint(10, 99)}{n.randint(100000, 999999)}", "ID")],
            ]
        )

    def acc(self) -> list:
        n = self.r
        return n.choice(
            [
                [("Acc: ", None), (f"A{n.randint(10000000, 99999999)}", "ID")],
                [("Accession No. ", None), (f"RAD-{n.randint(12, 24)}-{n.randint(0, 999999):06d}", "ID")],
                [("Acc# ", None), (f"{n.randint(2012, 2024)}{n.randint(0, 9999999):07d}", "ID")],
                [("ACCESSION: ", None), (f"XR{n.randint(100000, 9999999)}", "ID")],
                [("Order #", None), (f"{n.randint(1000000, 99999999)}", "ID")],
                [("FIN ", None), (f"{n.randint(100000000, 999999999)}", "ID")],
                [("CSN: ", None), (f"{n.randint(1000000000, 9999999999)}", "ID")],
            ]
        )

    def phone(self) -> list:
        n = self.r
        return n.choice(
            [
                [
                    ("at ", None),
                    (f"({n.randint(200, 989)}) {n.randint(200, 999)}-{n.randint(0, 9999):04d}", "CONTACT"),
                ],
                [("at ", None), (f"{n.randint(200, 989)}.{n.randint(200, 999)}.{n.randint(0, 9999):04d}", "CONTACT")],
                [("pager ", None), (f"{n.randint(10000, 99999)}", "CONTACT")],
                [("pgr #", None), (f"{n.randint(1, 9)}-{n.randint(1000, 9999)}", "CONTACT")],
                [("x", None), (f"{n.randint(1000, 9999)}", "CONTACT")],
                [("on ", None), (f"+44 20 {n.randint(1000, 9999)} {n.randint(1000, 9999)}", "CONTACT")],
                [("at ", None), (f"{n.randint(200, 989)}-{n.randint(200, 999)}-{n.randint(0, 9999):04d}", "CONTACT")],
                [("ext. ", None), (f"{n.randint(10000, 99999)}", "CONTACT")],
            ]
        )

    def email(self) -> list:
        f, l = self.person()
        return [
            (
                f"{f.lower()}.{re.sub('[^a-z]', '', l.lower())}@{self.r.choice(['mercyhealth.org', 'hosp.example.edu', 'nhs.net'])}",
                "CONTACT",
            )
        ]

    def age(self) -> list:
        a = self.r.randint(90, 104)
        return self.r.choice(
            [
                [(f"{a}", "AGE"), ("-year-old", None)],
                [(f"{a}", "AGE"), (" yo", None)],
                [(f"{a}", "AGE"), (" y/o", None)],
                [("aged ", None), (f"{a}", "AGE")],
                [(f"{a}", "AGE"), ("M" if self.r.random() < 0.5 else "F", None)],
                [(f"{a}", "AGE"), (" year old", None)],
            ]
        )

    def location(self) -> list:
        n = self.r
        return n.choice(
            [
                [(n.choice(self.hospitals), "LOCATION")],
                [("Ward ", None), (f"{n.randint(1, 12)}{n.choice('ABCD')}", "LOCATION")],
                [("Room ", None), (f"{n.randint(100, 999)}", "LOCATION")],
                [("bed ", None), (f"{n.randint(1, 30)}", "LOCATION")],
                [(f"{n.randint(2, 9)} {n.choice(['West', 'North', 'East', 'South'])}", "LOCATION"), (" ICU", None)],
            ]
        )

    def address(self) -> list:
        n = self.r
        return [
            (
                f"{n.randint(10, 9999)} {n.choice(STREETS)}, {n.choice(self.cities)}, {n.choice(STATES)} {n.randint(10000, 99999)}",
                "LOCATION",
            )
        ]


def sign_off(g: Gen) -> list:
    label = g.r.choice(
        [
            "Electronically signed by: ",
            "Dictated by: ",
            "Signed: ",
            "Attending radiologist: ",
            "Reviewed by ",
            "I have personally reviewed the images and agree with the report. ",
            "Resident: ",
            "Read by ",
            "Interpreted by: ",
            "/s/ ",
            "Final report verified by ",
            "Radiologist: ",
        ]
    )
    when = g.r.choice(
        [
            [(" on ", None), (g.date(True), "DATE")],
            [(" ", None), (g.date(True), "DATE"), (" ", None), (g.time(), "TIME")],
            [],
        ]
    )
    return [(label, None)] + g.doctor() + when


def communication(g: Gen) -> list:
    t = g.time()
    return g.r.choice(
        [
            [("Findings d/w ", None)] + g.doctor() + [(" at ", None), (t, "TIME"), (".", None)],
            [("Results discussed with ", None)]
            + g.doctor()
            + [(" by telephone at ", None), (t, "TIME"), (" on ", None), (g.date(), "DATE"), (".", None)],
            [("Critical result called to ", None)]
            + g.doctor()
            + [(" ", None)]
            + g.phone()
            + [(" at ", None), (t, "TIME"), (".", None)],
            [("Paged ", None)] + g.doctor() + [(" ", None)] + g.phone() + [(".", None)],
            [("Spoke with ", None)] + g.doctor() + [(", who acknowledged receipt, ", None), (t, "TIME"), (".", None)],
            [("The findings were communicated to the ordering clinician, ", None)]
            + g.doctor()
            + [(", on ", None), (g.date(), "DATE"), (" at ", None), (t, "TIME"), (".", None)],
        ]
    )


# Sentence forms; the last third of each list is reserved for the held-out part.
def header_forms(g: Gen, f, l) -> list[list]:
    return [
        [("Patient: ", None)] + g.patient_name(f, l) + [("  ", None)] + g.mrn() + [("\n", None)],
        [("NAME: ", None)] + g.patient_name(f, l) + [("   DOB: ", None), (g.date(True), "DATE"), ("\n", None)],
        g.mrn() + [("  ", None)] + g.acc() + [("\n", None)],
        [("EXAM DATE: ", None), (g.date(True), "DATE"), ("  TIME: ", None), (g.time(), "TIME"), ("\n", None)],
        [("Referring: ", None)] + g.doctor() + [("\n", None)],
        [("Location: ", None)] + g.location() + [("\n", None)],
        g.patient_name(f, l) + [(" | ", None)] + g.acc() + [(" | ", None), (g.date(True), "DATE"), ("\n", None)],
        [("Ordering physician: ", None)] + g.doctor() + [("  Phone ", None)] + g.phone()[1:] + [("\n", None)],
        [("Pt ", None)]
        + g.patient_name(f, l)
        + [(", ", None)]
        + g.age()
        + [(", seen in ", None)]
        + g.location()
        + [("\n", None)],
    ]


def history_forms(g: Gen) -> list[list]:
    keep = g.r.choice(KEEP_WORDS)
    return [
        [("HISTORY: ", None)] + g.age() + [(" with shortness of breath.\n", None)],
        [("INDICATION: Transfer from ", None)] + g.location() + [(", rule out pneumonia.\n", None)],
        [("CLINICAL INFORMATION: Fall at home on ", None), (g.date(), "DATE"), (". ", None)]
        + g.relative()
        + [("\n", None)],
        [("HISTORY: ", None), (keep, "KEEP"), (". Admitted ", None), (g.date(), "DATE"), (".\n", None)],
        [("Reason for exam: line placement ", None), (g.time(), "TIME"), (".\n", None)],
        [("INDICATION: Resident of nursing home at ", None)] + g.address() + [(". Fever.\n", None)],
        [("HX: ", None)]
        + g.age()
        + [
            (", ", None),
            (keep, "KEEP"),
            (", dyspnea since the ", None),
            (f"{g.r.randint(1, 28)}{g.r.choice(['st', 'nd', 'rd', 'th'])}", "DATE"),
            (".\n", None),
        ],
        [("History: seen by ", None)]
        + g.doctor()
        + [(" in clinic ", None), (g.date(), "DATE"), (". Contact ", None)]
        + g.email()
        + [(".\n", None)],
        [("Indication: ", None), (keep, "KEEP"), ("; outside films from ", None)]
        + g.location()
        + [(" dated ", None), (g.date(), "DATE"), (".\n", None)],
    ]


def comparison_forms(g: Gen) -> list[list]:
    return [
        [("COMPARISON: ", None), (g.date(True), "DATE"), (".\n", None)],
        [
            ("Comparison: Chest radiograph from ", None),
            (g.date(), "DATE"),
            (" and CT ", None),
            (g.date(True), "DATE"),
            (".\n", None),
        ],
        [("COMPARISON: None.\n", None)],
        [
            ("Compared with prior exam of ", None),
            (g.date(), "DATE"),
            (" at ", None),
            (g.time(), "TIME"),
            (".\n", None),
        ],
        [("Prior: ", None), (g.date(True), "DATE"), (" (", None)] + g.acc() + [(").\n", None)],
        [("COMPARISON: Outside study ", None), (g.date(), "DATE"), (" from ", None)] + g.location() + [(".\n", None)],
    ]


def build_report(rng: random.Random, held: bool, idx: int) -> dict:
    g = Gen(rng, held)
    f, l = g.person()
    b = Builder()

    def pick(forms: list[list]) -> list:
        cut = len(forms) * 2 // 3
        pool = forms[:cut] + forms[cut:] if held else forms[:cut]
        return rng.choice(pool)

    def emit(segs: list) -> None:
        for text, typ in segs:
            b.add(text, typ)

    for _ in range(rng.randint(1, 3)):
        emit(pick(header_forms(g, f, l)))
    emit(
        [
            (rng.choice(["EXAM: ", "PROCEDURE: ", "Study: "]), None),
            (rng.choice(["CHEST PA AND LATERAL", "Portable AP chest", "XR CHEST 1 VIEW", "CXR PA/LAT"]), None),
            ("\n", None),
        ]
    )
    emit(pick(history_forms(g)))
    emit(pick(comparison_forms(g)))
    emit([(rng.choice(["FINDINGS: ", "FINDINGS:\n", "Findings: "]), None)])
    sentences = rng.sample(PLAIN_FINDINGS, rng.randint(2, 4))
    keeps = rng.sample(KEEP_SENTENCES, rng.randint(1, 2))
    body = sentences + keeps
    rng.shuffle(body)
    for s in body:
        term = next((k for k in sorted(KEEP_WORDS, key=len, reverse=True) if k in s), None)
        if term:
            i = s.index(term)
            emit([(s[:i], None), (term, "KEEP"), (s[i + len(term) :] + " ", None)])
        else:
            emit([(s + " ", None)])
    if rng.random() < 0.5:
        emit([("Patient identified as ", None)] + g.patient_name(f, l) + [(" by wristband. ", None)])
    emit([("\n", None), (rng.choice(["IMPRESSION: ", "IMPRESSION:\n1. ", "Impression: "]), None)])
    emit(
        [
            (
                rng.choice(
                    [
                        "No acute cardiopulmonary process. ",
                        "Findings as above, improved since ",
                        "Worsening edema since ",
                    ]
                ),
                None,
            )
        ]
    )
    if b.parts[-1].endswith("since "):
        emit([(g.date(), "DATE"), (". ", None)])
    emit(communication(g))
    emit([("\n\n", None)])
    emit(sign_off(g))
    if rng.random() < 0.5:
        emit(
            [("\n", None), (rng.choice(["CC: ", "cc: ", "Copy to: "]), None)]
            + g.doctor()
            + [("; ", None)]
            + g.doctor()
        )
    if rng.random() < 0.3:
        emit(
            [("\n", None), (rng.choice(["Radiology Department, ", "Imaging Services, "]), None)]
            + g.address()
            + [(" Tel ", None)]
            + g.phone()[1:]
        )
    meta = {}
    if rng.random() < 0.6:
        meta = {
            "PatientName": f"{l.upper()}^{f.upper()}",
            "PatientID": str(rng.randint(1000000, 9999999)),
            "AccessionNumber": f"A{rng.randint(10000000, 99999999)}",
            "PatientBirthDate": f"{rng.randint(1920, 1990)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            "ReferringPhysicianName": "^".join(reversed(g.person())),
        }
    text = b.text()
    for s in b.gold + b.keep:
        assert s["end"] <= len(text)
    return {
        "id": f"{'heldout' if held else 'tune'}-{idx:03d}",
        "text": text,
        "meta": meta,
        "gold": b.gold,
        "keep": b.keep,
    }


MARK = re.compile(r"\[\[([A-Z]+):(.*?)\]\]|\{\{(.*?)\}\}")


def read_handwritten(path: Path, prefix: str) -> list[dict]:
    """Hand-written reports: `[[TYPE:text]]` marks PHI, `{{text}}` a medical term to keep, `---` separates."""
    rows = []
    for i, block in enumerate(path.read_text(encoding="utf-8").split("\n---\n")):
        lines = block.strip("\n").splitlines()
        meta = json.loads(lines[0][len("META:") :]) if lines and lines[0].startswith("META:") else {}
        body = "\n".join(lines[1:] if lines and lines[0].startswith("META:") else lines)
        b, pos = Builder(), 0
        for m in MARK.finditer(body):
            b.add(body[pos : m.start()])
            if m.group(1):
                b.add(m.group(2), m.group(1))
            else:
                b.add(m.group(3), "KEEP")
            pos = m.end()
        b.add(body[pos:])
        rows.append({"id": f"{prefix}-{i:03d}", "text": b.text(), "meta": meta, "gold": b.gold, "keep": b.keep})
    return rows


def write(path: Path, n: int, seed: int, held: bool) -> tuple[int, int]:
    rng = random.Random(seed)
    rows = [build_report(rng, held, i) for i in range(n)]
    hand = HERE / f"handwritten_{'heldout' if held else 'tune'}.txt"
    rows += read_handwritten(hand, f"{'heldout' if held else 'tune'}-hand")
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows), sum(len(r["gold"]) for r in rows)


if __name__ == "__main__":
    for name, n, seed, held in (("tune.jsonl", 80, 11, False), ("heldout.jsonl", 60, 2027, True)):
        reports, spans = write(HERE / name, n, seed, held)
        print(f"{name}: {reports} reports, {spans} PHI spans")
    # Held-out B: hand-written after the rules were last changed, scored once (see the README).
    rows = read_handwritten(HERE / "handwritten_heldout_b.txt", "heldout-b")
    (HERE / "heldout_b.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    print(f"heldout_b.jsonl: {len(rows)} reports, {sum(len(r['gold']) for r in rows)} PHI spans")
