"""Report text for phantom studies: FINDINGS and IMPRESSION that agree with the labels, with PHI.

Phrasing is drawn from small template sets (several per label and polarity) so reports vary;
every template is one the labeler (`cxrsynth.data.labeler`) reads back to the same label. The PHI
(names in several forms, MRN, accession number, dates, times, phone numbers, ages over 89) is the
same identity that `Record.phi_meta` holds, so de-identification can be scored against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Optional

import numpy as np

FIRST = (
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Daniel",
    "Nancy",
    "Matthew",
    "Lisa",
    "Anthony",
    "Betty",
    "Mark",
    "Margaret",
    "Donald",
    "Sandra",
    "Steven",
    "Ashley",
    "Paul",
    "Kimberly",
    "Andrew",
    "Emily",
    "Joshua",
    "Donna",
    "Kenneth",
    "Michelle",
    "Kevin",
    "Carol",
    "Brian",
    "Amanda",
    "George",
    "Dorothy",
    "Timothy",
    "Melissa",
    "Ronald",
    "Deborah",
    "Wei",
    "Mei",
    "Rahul",
    "Priya",
    "Oluwaseun",
    "Ngozi",
    "Jose",
    "Maria",
    "Mohammed",
    "Fatima",
    "Yuki",
    "Hiroshi",
    "Sven",
    "Ingrid",
    "Dmitri",
    "Olga",
    "Kwame",
    "Ama",
    "Luis",
    "Carmen",
)
LAST = (
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
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Okafor",
    "Chen",
    "Wang",
    "Patel",
    "Shah",
    "Kowalski",
    "Novak",
    "Yamamoto",
    "Tanaka",
    "Schmidt",
    "Fischer",
    "O'Brien",
    "McCarthy",
    "Van der Berg",
    "Al-Hassan",
    "Ivanova",
    "Mensah",
    "Haddad",
    "Costa",
    "Silva",
    "Lindqvist",
)
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

# label -> (positive, uncertain, negative) sentence templates. {side} is "left" or "right".
SENTENCES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "Atelectasis": (
        (
            "Plate-like atelectasis at the {side} lung base.",
            "There is {grade} {side} basilar atelectasis.",
            "Linear {side} basilar atelectasis with mild volume loss.",
        ),
        ("Possible {side} basilar atelectasis.", "Streaky {side} basilar density may represent atelectasis."),
        ("No atelectasis.", "There is no evidence of atelectasis."),
    ),
    "Cardiomegaly": (
        (
            "The heart is {adverb} enlarged.",
            "There is {grade} cardiomegaly.",
            "Enlargement of the cardiac silhouette is noted.",
        ),
        ("Borderline cardiomegaly.", "Possible cardiomegaly."),
        ("Heart size is normal.", "The cardiac silhouette is not enlarged.", "No cardiomegaly."),
    ),
    "Consolidation": (
        (
            "Dense {side} lower lobe consolidation.",
            "There is lobar consolidation in the {side} lower lobe.",
            "Consolidation of the {side} lower lobe with air bronchograms.",
        ),
        (
            "Possible early consolidation at the {side} base.",
            "Consolidation in the {side} lower lobe cannot be excluded.",
        ),
        ("No focal consolidation.", "There is no consolidation."),
    ),
    "Edema": (
        (
            "Perihilar haze consistent with {grade} pulmonary edema.",
            "There is {grade} interstitial pulmonary edema.",
            "Bilateral perihilar edema.",
        ),
        ("Possible mild pulmonary edema.", "Perihilar haze may represent early edema."),
        ("No pulmonary edema.", "There is no edema."),
    ),
    "Enlarged Cardiomediastinum": (
        (
            "The mediastinum is widened.",
            "Widening of the upper mediastinum.",
            "Enlarged cardiomediastinal silhouette.",
        ),
        ("Possible mediastinal widening.", "Possible widening of the upper mediastinum."),
        ("No mediastinal widening.", "The mediastinum is not widened."),
    ),
    "Fracture": (
        (
            "There is a {side} rib fracture.",
            "Healing fracture of a {side} lateral rib.",
            "Nondisplaced {side} rib fracture with callus.",
        ),
        ("Possible {side} rib fracture.", "A {side} rib fracture cannot be excluded."),
        ("No displaced fracture.", "There is no acute fracture."),
    ),
    "Lung Lesion": (
        (
            "A well-circumscribed {side} lung nodule is present.",
            "There is a {size} cm {side} pulmonary nodule.",
            "Rounded {side} lung mass measuring {size} cm.",
        ),
        ("Possible {side} pulmonary nodule.", "Questionable {side} lung nodule."),
        ("No suspicious pulmonary nodule.", "There is no lung mass."),
    ),
    "Lung Opacity": (
        (
            "Patchy opacities in both lungs.",
            "There are scattered bilateral opacities.",
            "Multifocal patchy opacities are present.",
        ),
        ("Possible faint bilateral opacities.", "Questionable patchy opacities."),
        ("No focal opacity.", "There is no opacity."),
    ),
    "Pleural Effusion": (
        (
            "There is a {sev} {side} pleural effusion.",
            "{Sev} {side} pleural effusion with a meniscus.",
            "Blunting of the {side} costophrenic angle from pleural effusion.",
        ),
        ("Possible small {side} pleural effusion.", "A trace {side} effusion cannot be excluded."),
        (
            "No pleural effusion.",
            "There is no pleural effusion.",
            "The costophrenic angles are sharp without effusion.",
        ),
    ),
    "Pleural Other": (
        (
            "{Side} apical pleural thickening.",
            "Calcified pleural plaques along the {side} chest wall.",
            "There is {side} pleural thickening.",
        ),
        ("Possible {side} pleural thickening.", "Questionable {side} pleural plaque."),
        ("No pleural thickening.", "There is no pleural plaque."),
    ),
    "Pneumonia": (
        (
            "Ill-defined mottled {side} lung density consistent with pneumonia.",
            "Findings consistent with {side} pneumonia.",
            "There is {side} pneumonia.",
        ),
        ("Possible {side} pneumonia.", "Pneumonia cannot be excluded.", "Findings suspicious for early pneumonia."),
        ("No pneumonia.", "There is no evidence of pneumonia."),
    ),
    "Pneumothorax": (
        (
            "There is a {sev} {side} pneumothorax.",
            "{Sev} {side} apical pneumothorax with a visible pleural edge.",
            "A {side} pneumothorax is present.",
        ),
        ("Possible small {side} apical pneumothorax.", "A tiny {side} pneumothorax cannot be excluded."),
        ("No pneumothorax.", "There is no pneumothorax.", "Pneumothorax is not seen."),
    ),
    "Support Devices": (
        ("{device}", "{device}"),
        ("{device}",),
        ("No lines or tubes.", "There are no support devices."),
    ),
}
DEVICES = {
    "et": ("Endotracheal tube tip 4 cm above the carina.", "An endotracheal tube is in standard position."),
    "line": (
        "Right PICC line with tip in the lower SVC.",
        "Right internal jugular central venous catheter terminates in the SVC.",
    ),
    "pacer": (
        "Left chest wall pacemaker with leads in the right heart.",
        "A cardiac pacemaker is present with intact leads.",
    ),
}
UNCERTAIN_DEVICE = "A linear density may represent a feeding tube."
# label -> noun phrase for grouped negations ("No pneumothorax or pleural effusion.").
NOUNS = {
    "Atelectasis": "atelectasis",
    "Consolidation": "focal consolidation",
    "Edema": "pulmonary edema",
    "Fracture": "displaced fracture",
    "Lung Lesion": "pulmonary nodule",
    "Lung Opacity": "focal opacity",
    "Pleural Effusion": "pleural effusion",
    "Pleural Other": "pleural thickening",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    "Cardiomegaly": "cardiomegaly",
    "Enlarged Cardiomediastinum": "mediastinal widening",
}
SUMMARY = {
    "Atelectasis": "{Side} basilar atelectasis.",
    "Cardiomegaly": "Cardiomegaly.",
    "Consolidation": "{Side} lower lobe consolidation.",
    "Edema": "Pulmonary edema.",
    "Enlarged Cardiomediastinum": "Widened mediastinum.",
    "Fracture": "{Side} rib fracture.",
    "Lung Lesion": "{Side} pulmonary nodule; CT recommended.",
    "Lung Opacity": "Patchy bilateral opacities.",
    "Pleural Effusion": "{Side} pleural effusion.",
    "Pleural Other": "{Side} pleural thickening.",
    "Pneumonia": "{Side} pneumonia.",
    "Pneumothorax": "{Side} pneumothorax.",
    "Support Devices": "Support devices as described.",
}
NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute intrathoracic abnormality.",
    "Normal chest radiograph.",
    "No acute cardiopulmonary abnormality.",
)
SEVERITY = ("small", "moderate", "large")
GRADE = ("mild", "moderate", "severe")
ADVERB = ("mildly", "moderately", "markedly")


@dataclass(frozen=True)
class Identity:
    """The PHI of one patient and study, as a site's systems hold it."""

    first: str
    last: str
    mrn: str
    birth: date
    sex: str
    referrer_first: str
    referrer_last: str
    radiologist: str
    phone: str
    accession: str
    study_date: date
    study_time: tuple[int, int]

    @property
    def age(self) -> int:
        b, d = self.birth, self.study_date
        return d.year - b.year - ((d.month, d.day) < (b.month, b.day))

    def header(self) -> dict[str, str]:
        return {
            "PatientName": f"{self.last.upper()}^{self.first.upper()}",
            "PatientID": self.mrn,
            "AccessionNumber": self.accession,
            "PatientBirthDate": self.birth.strftime("%Y%m%d"),
            "ReferringPhysicianName": f"{self.referrer_last.upper()}^{self.referrer_first.upper()}",
        }


def draw_patient(rng: np.random.Generator) -> dict:
    """Draw a patient's lasting identity: name, MRN, birth date, sex."""
    # Ages above 89 are PHI under HIPAA Safe Harbor (45 CFR 164.514(b)(2)(i)(C)); a share of the
    # cohort is that old so de-identification meets them.
    age = int(rng.integers(90, 101)) if rng.random() < 0.15 else int(rng.integers(19, 90))
    return {
        "first": FIRST[rng.integers(len(FIRST))],
        "last": LAST[rng.integers(len(LAST))],
        "mrn": f"{int(rng.integers(10**7, 10**8))}",
        # Ages are as of 2018, the middle of the phantom study years (2015-2021).
        "birth": date(2018 - age, 1, 1) - timedelta(days=int(rng.integers(0, 365))),
        "sex": "male" if rng.random() < 0.5 else "female",
    }


def draw_identity(rng: np.random.Generator, patient: dict, study_date: date) -> Identity:
    birth = patient["birth"]
    area = int(rng.integers(201, 990))
    return Identity(
        first=patient["first"],
        last=patient["last"],
        mrn=patient["mrn"],
        birth=birth,
        sex=patient["sex"],
        referrer_first=FIRST[rng.integers(len(FIRST))],
        referrer_last=LAST[rng.integers(len(LAST))],
        radiologist=f"{FIRST[rng.integers(len(FIRST))]} {LAST[rng.integers(len(LAST))]}",
        phone=f"{area}{int(rng.integers(200, 999))}{int(rng.integers(0, 10000)):04d}",
        accession=f"{'ACEN'[rng.integers(4)]}{int(rng.integers(10**7, 10**8))}",
        study_date=study_date,
        study_time=(int(rng.integers(0, 24)), int(rng.integers(0, 60))),
    )


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _name(rng, first: str, last: str, title: str = "") -> str:
    forms = (
        f"{first} {last}",
        f"{last}, {first}",
        f"{first[0]}. {last}",
        f"{first} {last}".upper(),
        f"{title} {last}".strip(),
    )
    return _pick(rng, forms if title else forms[:4])


def _date(rng, d: date) -> str:
    forms = (
        f"{d.month:02d}/{d.day:02d}/{d.year}",
        d.isoformat(),
        f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
        f"{d.month}/{d.day}/{d.year % 100:02d}",
        f"{d.day:02d}-{MONTHS[d.month - 1][:3]}-{d.year}",
    )
    return _pick(rng, forms)


def _time(rng, t: tuple[int, int]) -> str:
    h, m = t
    forms = (f"{h:02d}:{m:02d}", f"{(h % 12) or 12}:{m:02d} {'AM' if h < 12 else 'PM'}", f"{h:02d}{m:02d} hours")
    return _pick(rng, forms)


def _phone(rng, p: str) -> str:
    forms = (f"({p[:3]}) {p[3:6]}-{p[6:]}", f"{p[:3]}-{p[3:6]}-{p[6:]}", f"{p[:3]}.{p[3:6]}.{p[6:]}")
    return _pick(rng, forms)


def _keep(kind: str, text: str) -> str:
    return text


def _tag(kind: str, text: str) -> str:
    """PHI as a published de-identified collection shows it: a typed tag (the sites' redact mode)."""
    return f"[{kind}]"


def phi_preamble(rng: np.random.Generator, who: Identity, prior: Optional[date], phi=_keep) -> list[str]:
    """PHI sentences that open FINDINGS (patient identity, exam time, comparison); `phi(kind, text)`
    renders each PHI value (`_tag` for a de-identified cohort)."""
    title = "Mr." if who.sex == "male" else "Ms."
    out = []
    choice = int(rng.integers(4))
    if choice == 0:
        out.append(
            f"Patient {phi('NAME', _name(rng, who.first, who.last))} (MRN {phi('ID', who.mrn)}), {who.age}-year-old {who.sex}."
        )
    elif choice == 1:
        out.append(
            f"{phi('NAME', _name(rng, who.first, who.last, title))} is a {who.age} year old {who.sex}, MRN: {phi('ID', who.mrn)}."
        )
    elif choice == 2:
        out.append(
            f"Exam {phi('DATE', _date(rng, who.study_date))} at {phi('TIME', _time(rng, who.study_time))}, accession {phi('ID', who.accession)}."
        )
    if rng.random() < 0.6:
        out.append(
            f"Comparison is made to the prior radiograph of {phi('DATE', _date(rng, prior))}."
            if prior
            else "No prior studies for comparison."
        )
    if rng.random() < 0.3:
        out.append(f"DOB {phi('DATE', _date(rng, who.birth))}.")
    return out


def phi_signoff(rng: np.random.Generator, who: Identity, urgent: bool, phi=_keep) -> list[str]:
    """PHI sentences that close IMPRESSION (communication of results, signature)."""
    out = []
    ref = _name(rng, who.referrer_first, who.referrer_last, "Dr.")
    if urgent or rng.random() < 0.3:
        out.append(
            f"Findings were discussed with Dr. {phi('NAME', ref.replace('Dr. ', ''))} by telephone at {phi('TIME', _time(rng, who.study_time))} on {phi('DATE', _date(rng, who.study_date))}."
        )
    if rng.random() < 0.4:
        out.append(
            f"Ordering physician {phi('NAME', ref)} can be reached at {phi('CONTACT', _phone(rng, who.phone))}."
        )
    if rng.random() < 0.5:
        out.append(
            f"Electronically signed by {phi('NAME', who.radiologist)}, MD, {phi('DATE', _date(rng, who.study_date))}. Accession {phi('ID', who.accession)}."
        )
    return out


def _fill(rng, template: str, side: str, sev: int, device: str) -> str:
    size = f"{1.0 + sev * 0.8 + float(rng.integers(0, 5)) / 10:.1f}"
    return template.format(
        side=side,
        Side=side.capitalize(),
        sev=SEVERITY[sev],
        Sev=SEVERITY[sev].capitalize(),
        grade=GRADE[sev],
        adverb=ADVERB[sev],
        size=size,
        device=device,
    )


def write_report(
    rng: np.random.Generator,
    labels: dict,
    sides: dict,
    severity: dict,
    device: str,
    who: Identity,
    prior: Optional[date],
    deidentified: bool = False,
) -> tuple[str, str]:
    """FINDINGS and IMPRESSION for one study. `labels`: name -> 1/0/-1/None (No Finding excluded).
    `deidentified`: PHI written as typed tags, as a public collection is published."""
    phi = _tag if deidentified else _keep
    findings = phi_preamble(rng, who, prior, phi)
    negated = []
    for name, value in labels.items():
        if value is None or name == "No Finding":
            continue
        pos, unc, neg = SENTENCES[name]
        side = "left" if sides.get(name, 0) else "right"
        if value == 1:
            dev = _pick(rng, DEVICES[device]) if name == "Support Devices" else ""
            findings.append(_fill(rng, _pick(rng, pos), side, severity.get(name, 1), dev))
        elif value == -1:
            text = UNCERTAIN_DEVICE if name == "Support Devices" else _fill(rng, _pick(rng, unc), side, 0, "")
            findings.append(text)
        else:
            negated.append(name)
    order = rng.permutation(len(negated))
    negated = [negated[i] for i in order]
    while negated:
        take = min(len(negated), int(rng.integers(1, 4)))
        group, negated = negated[:take], negated[take:]
        if len(group) == 1 or any(n not in NOUNS for n in group):
            for n in group:
                findings.append(_pick(rng, SENTENCES[n][2]))
        elif len(group) == 2:
            findings.append(f"No {NOUNS[group[0]]} or {NOUNS[group[1]]}.")
        else:
            findings.append(f"No {NOUNS[group[0]]}, {NOUNS[group[1]]}, or {NOUNS[group[2]]}.")
    abnormal = [n for n, v in labels.items() if v in (1, -1) and n not in ("No Finding", "Support Devices")]
    impression = []
    for n in abnormal:
        side = ("left" if sides.get(n, 0) else "right").capitalize()
        text = SUMMARY[n].replace("{Side}", side)
        impression.append(
            text if labels[n] == 1 else f"Possible {text[0].lower()}{text[1:]}".replace("; CT recommended", "")
        )
    if not abnormal:
        if labels.get("Support Devices") == 1:
            impression.append(SUMMARY["Support Devices"])
        impression.append(_pick(rng, NORMAL_IMPRESSIONS))
        if rng.random() < 0.5:
            findings.append("The lungs are clear.")
    impression += phi_signoff(rng, who, urgent=any(labels.get(n) == 1 for n in ("Pneumothorax", "Pneumonia")), phi=phi)
    return " ".join(findings), " ".join(impression)
