"""Radiology-text recognizers added to Presidio's: identifiers, dates, times, ages, contacts, names, places.

Each rule is a regular expression; when it has a group named `phi`, only that group is PHI (the
label "MRN:" or the title "Dr." stays readable). Entity types are the project's own vocabulary,
shared with the gold corpus: NAME, ID, DATE, TIME, AGE, CONTACT, LOCATION.
The forms follow the HIPAA Safe Harbor identifiers (45 CFR 164.514(b)(2)) as they appear in
radiology reports (Stanford radiology de-identifier, Chambon et al. 2023, Table 1 categories).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from presidio_analyzer import LocalRecognizer, RecognizerResult

ENTITY_TYPES = ("NAME", "ID", "DATE", "TIME", "AGE", "CONTACT", "LOCATION")

MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
    # French, Spanish, Portuguese, German, Italian month names (international reports)
    r"|janvier|f[ée]vrier|mars|avril|mai|juin|juillet|ao[ûu]t|septembre|octobre|novembre|d[ée]cembre"
    r"|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre"
    r"|janeiro|fevereiro|mar[çc]o|maio|junho|julho|setembro|outubro|novembro|dezembro"
    r"|januar|februar|m[äa]rz|juni|juli|oktober|dezember|gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre)"
)
ORD = r"(?:st|nd|rd|th)"
# One name word: capitalised (Smith, O'Neil, McDonald, Garcia-Lopez) or ALL CAPS.
# Capitalised words in reports that are never a name on their own: headers, labels, views, roles.
NON_NAME_WORDS = frozenset(
    """id mrn dob name names history age sex date time location number no med rec record ct mri mr pa ap icu ed er cxr
    picc ng ett ij xr impression findings comparison technique indication report exam examination study the this a an
    on at in of to see radiology emergency department service team unit portable chest clinical note notes is was has
    not none unknown lateral frontal upright supine semi-erect view views single two one electronically electronic
    signed copy copies tel phone fax pager dictated transcribed reviewed attending resident fellow referring ordering
    requesting physician provider patient pt per dr doctor mr mrs ms final preliminary prelim addendum wife husband
    brother sister son daughter mother father partner caregiver family spouse niece nephew and or with by for from
    left right bilateral lungs lung heart hospital clinic center centre ward room bed floor procedure indications
    reason critical result results findings discussed spoke paged called verified interpreted read approved reported
    cc tech technologist radiologist staff author primary care nurse rn md do phd mbbs frcr np ms cm mm
    mediastinum mediastinal cardiomegaly atelectasis effusion effusions consolidation pneumothorax edema opacity
    opacities hilum hila trachea carina aorta neg pos lv rv la rad imp hx dx sob cabg copd chf ards ptx nl wnl
    pulmonary pleural cardiac interstitial interstitium vascular vasculature basilar bibasilar apical apices perihilar
    hilar costophrenic silhouette cardiomediastinal nodule nodules lobe lobar lingula lingular hemidiaphragm
    hemidiaphragms diaphragm thoracic osseous pneumonia catheter pacemaker sternotomy granuloma emphysema
    pneumoperitoneum calcified calcification congestion cephalization retrocardiac subsegmental airspace
    cardiopulmonary opacification infiltrate infiltrates reticular blunting meniscus thickening subcutaneous
    endotracheal enteric nasogastric tracheostomy fracture fractures hyperinflation scarring parenchyma parenchymal
    enlargement enlarged widening edematous consolidative patchy focal diffuse pneumothoraces atelectatic
    acute chronic possible probable support supported device devices tube tubes line lines rib ribs base bases density
    densities volume volumes angle angles abnormality abnormalities evidence consistent noted seen present clear mild
    moderate severe linear widened loss upper lower mid displaced normal plate small svc""".split()
)
NOT_NAME = r"(?!(?i:" + "|".join(sorted(NON_NAME_WORDS, key=len, reverse=True)) + r")\b)"
# Latin letters with accents (Inés, Krüger, Wiśniewska): Latin-1 and Latin Extended-A ranges.
UP = "A-Z\u00c0-\u00d6\u00d8-\u00de\u0100-\u017e"
LO = "a-z\u00df-\u00f6\u00f8-\u00ff\u0100-\u017f"
NAME_WORD = rf"{NOT_NAME}(?:(?:Ma?c|O['\u2019]|D['\u2019])?[{UP}][{LO}]+(?:-[{UP}{LO}][{LO}]+)?|[{UP}]{{2,}}(?:['\u2019-][{UP}]+)?)"
INITIAL = r"[A-Z](?:\.|(?=\s))"
# A person's name: one to three words with optional middle initials ("John A. Smith", "J. Smith").
PERSON = rf"(?:{INITIAL}\s?)?{NAME_WORD}(?:\s{INITIAL})?(?:\s(?:{NAME_WORD}|{INITIAL})){{0,2}}"
# "SMITH, JOHN" / "Smith, John A" / "Smith J"
LAST_FIRST = rf"{NAME_WORD},\s?{NAME_WORD}(?:\s{INITIAL})?"
PERSON_OR_LF = rf"(?:{LAST_FIRST}|{PERSON})"
TITLE = r"(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Sr|Sister|Nurse)"
CREDENTIAL = (
    r"(?:M\.?D\.?|D\.?O\.?|Ph\.?D\.?|MBBS|MBChB|FRCR|FRCPC|FRANZCR|FACR|R\.?N\.?|N\.?P\.?|PA-C|P\.?A\.?"
    r"|CRNP|DNP|RT\(R\)|RRA|ARRT|MPH|MSc|DMRD)"
)
SIGN_LABEL = (
    r"(?:electronically\s+signed(?:\s+by)?|e-?signed\s+by|signed\s+by|signed|dictated\s+by|dictated|transcribed\s+by"
    r"|reviewed\s+by|read\s+by|interpreted\s+by|reported\s+by|verified\s+by|approved\s+by|attending(?:\s+radiologist)?"
    r"|resident|fellow|radiologist|staff\s+radiologist|reading\s+radiologist|ordering\s+(?:physician|provider|md|clinician)"
    r"|referring\s+(?:physician|provider|md|clinician|doctor)|requested\s+by|ordered\s+by|performed\s+by|technologist"
    r"|tech|rad\s+tech|cc|c\.c\.|copy\s+to|copies\s+to|discussed\s+with|d/w|dw|spoke\s+with|spoke\s+to|called\s+to"
    r"|communicated\s+to|conveyed\s+to|relayed\s+to|informed|notified|paged|author|referrer|physician|clinician"
    r"|referring|ordering|requesting|identified\s+as|ref\.?|referred\s+by|patient|pt|name|patient\s+name|pt\s+name|surname|first\s+name|last\s+name|given\s+name|reported\s+to|results\s+to"
    r"|preliminary\s+read\s+by|prelim\s+by|wet\s+read\s+by|addendum\s+by|final\s+read\s+by|consultant|provider|pcp)"
)
RELATIVE = (
    r"(?:wife|husband|spouse|partner|son|daughter|mother|father|mom|dad|brother|sister|niece|nephew|grandson"
    r"|granddaughter|grandmother|grandfather|aunt|uncle|cousin|friend|caregiver|guardian|fianc[ée]e?|neighbou?r|roommate)"
)
ID_LABEL = (
    r"(?:MRN|MR\s?#|MR\s?No\.?|MR\s?Number|Med(?:ical)?\.?\s?Rec(?:ord)?\.?\s?(?:No\.?|Number|#)|Acc(?:ession)?\.?"
    r"(?:\s?(?:No\.?|Number|#))?|Unit\s?(?:No\.?|Number|#)|Pt\.?\s?ID|Patient\s?ID|Hosp(?:ital)?\.?\s?(?:No\.?|Number|#)"
    r"|Study\s?(?:ID|No\.?|#)|Order\s?(?:ID|No\.?|Number|#)|Exam\s?(?:ID|No\.?|#)|Case\s?(?:ID|No\.?|#)|Encounter(?:\s?(?:ID|No\.?|#))?"
    r"|Visit\s?(?:ID|No\.?|#)|FIN|CSN|NHS\s?(?:No\.?|Number)|Health\s?Card(?:\s?(?:No\.?|Number))?|Req(?:uisition)?\.?\s?(?:No\.?|#)"
    r"|Account\s?(?:No\.?|Number|#)|Acct\.?\s?(?:No\.?|#)?|Specimen\s?(?:ID|No\.?)|Film\s?(?:No\.?|#)|IPP|NIP|GMC|NPI|DEA"
    r"|License\s?(?:No\.?|#)|Licence\s?(?:No\.?|#)|Badge|Employee\s?(?:ID|No\.?)|ID)"
)
# Ordinals that are anatomy, not dates ("the 5th rib", "the 4th ventricle").
ANATOMY_AFTER_ORDINAL = (
    r"(?:\s+(?:and\s+\d{1,2}(?:st|nd|rd|th)\s+)?(?:(?:left|right|anterior|posterior|lateral)\s+){0,3}"
    r"(?:ribs?|ventricle|intercostal|interspace|vertebra|vertebral|cervical|thoracic|lumbar|sacral|metacarpal"
    r"|metatarsal|digit|finger|toe|percentile|decade|cranial|costal|space|segment|generation|lobe|branch|order|degree))"
)


@dataclass(frozen=True)
class Rule:
    name: str
    entity: str
    pattern: str
    score: float = 0.85
    flags: int = 0
    needs: str = ""  # a cheap regex that must match somewhere before the rule runs (speed only)


RULES: tuple[Rule, ...] = (
    # --- identifiers -------------------------------------------------------------------------
    Rule(
        "id_labelled",
        "ID",
        rf"\b(?i:{ID_LABEL})\s*(?:[:#=]|is|no\.?)?\s*#?\s*(?P<phi>(?=[A-Za-z0-9-]*\d)[A-Za-z0-9][A-Za-z0-9\-/.]{{2,}}[A-Za-z0-9])",
    ),
    Rule("id_ssn", "ID", r"\b\d{3}-\d{2}-\d{4}\b", 0.9),
    Rule("id_prefixed", "ID", r"\b[A-Z]{1,5}-?\d{5,}(?:-\d+)?\b", 0.8),
    Rule("id_grouped", "ID", r"\b[A-Z]{2,5}-\d{2,4}-\d{3,}\b", 0.8),
    Rule("id_digits", "ID", r"(?<![\d.,/:-])\d{6,}(?![\d.,/:]\d)", 0.6),
    Rule("id_dashed", "ID", r"(?<![\d/.-])\d{2,4}-\d{2,4}-\d{2,4}(?:-\d{1,4})?(?![\d/.-])", 0.6),
    Rule("id_year_serial", "ID", r"(?<![\d/.-])(?:19|20)\d{2}-\d{5,}(?![\d-])", 0.7),
    Rule("id_nhs", "ID", r"\b\d{3}\s\d{3}\s\d{4}\b", 0.6),
    # --- dates -------------------------------------------------------------------------------
    Rule(
        "date_numeric",
        "DATE",
        r"(?<![\d/.-])(?:0?[1-9]|[12]\d|3[01])[/.-](?:0?[1-9]|[12]\d|3[01])[/.-](?:19|20)?\d{2}(?![\d-]|/\d|\.\d)",
        0.9,
    ),
    Rule(
        "date_iso",
        "DATE",
        r"(?<![\d/.-])(?:19|20)\d{2}[/.-](?:0?[1-9]|1[0-2])[/.-](?:0?[1-9]|[12]\d|3[01])(?![\d-]|/\d|\.\d)",
        0.9,
    ),
    Rule("date_compact", "DATE", r"(?<!\d)(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)", 0.7),
    Rule(
        "date_day_month",
        "DATE",
        rf"(?i)\b\d{{1,2}}{ORD}?(?:\s+of)?[\s\-/.]?{MONTH}\.?(?:[\s\-/.,]*'?(?:19|20)?\d{{2}})?\b(?!:)",
        0.9,
    ),
    Rule(
        "date_month_day", "DATE", rf"(?i)\b{MONTH}\.?\s+\d{{1,2}}{ORD}?\b(?:,?\s+(?:19|20)\d{{2}}\b)?(?![:.]\d)", 0.9
    ),
    Rule("date_month_year", "DATE", rf"(?i)\b{MONTH}\.?,?\s+(?:of\s+)?(?:19|20)\d{{2}}\b", 0.8),
    Rule("date_month_slash_year", "DATE", r"(?<![\d/.])(?:0?[1-9]|1[0-2])/(?:19|20)\d{2}(?![\d/])", 0.7),
    Rule(
        "date_ordinal",
        "DATE",
        rf"(?i)\b(?:the|on|since|from|until|by)\s+(?P<phi>(?:[12]\d|3[01]|0?[1-9]){ORD})\b(?!{ANATOMY_AFTER_ORDINAL})",
        0.7,
    ),
    Rule(
        "date_short",
        "DATE",
        r"(?i)\b(?:on|dated?|from|since|of|prior|comparison:?|comparison\s+(?:is|was)|compared\s+(?:to|with)|study|studies|exam|films?|radiographs?|cxrs?|until|by|and|to|at|admitted|discharged|seen|performed|obtained|done|scanned|imaged|placed|inserted|removed|started|surgery|born|dob:?|ap|pa|portable|chest|xr|x-?ray|view|views|lateral|images?|pacs)[ \t]?[,:]?\s+(?P<phi>(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01]))(?![\d/]|[ \t]*(?:views?|images?)\b)",
        0.7,
    ),
    # A month/day with a time after it ("9/8 0424 hours", "4/19 at 10:15") or on a comparison or
    # exam line ("PRIOR STUDIES: CT urogram 4/19", "Exam: Chest. Two views. 7/8."): a date, not a fraction.
    Rule(
        "date_short_time",
        "DATE",
        r"(?<![\d/.])(?P<phi>(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01]))(?=[ \t]+(?:at[ \t]+)?(?:[01]?\d|2[0-3]):?[0-5]\d(?!\d))",
        0.7,
    ),
    Rule(
        "date_short_line",
        "DATE",
        r"(?im)^[ \t]*(?:comparison|prior(?:[ \t]+(?:stud(?:y|ies)|exams?|films?))?|priors|exam|study|procedure)[ \t]*:[^\n]*?(?<![\d/.])(?P<phi>(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01]))(?![\d/]|[ \t]*(?:views?|images?)\b)",
        0.7,
    ),
    Rule(
        "date_weekday",
        "DATE",
        r"\b(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)(?:\s+(?:morning|afternoon|evening|night))?\b",
        0.5,
    ),
    Rule(
        "date_holiday",
        "DATE",
        r"(?i)\b(?:Christmas(?:\s+(?:Day|Eve))?|New\s+Year'?s(?:\s+(?:Day|Eve))?|Thanksgiving|Easter(?:\s+Sunday)?|Independence\s+Day)\b",
        0.6,
    ),
    # --- times -------------------------------------------------------------------------------
    Rule(
        "time_colon",
        "TIME",
        r"(?<![\d:])(?:[01]?\d|2[0-3])[:h][0-5]\d(?::[0-5]\d)?(?:[ \t]?(?i:a\.?m\.?|p\.?m\.?|hrs?\b|h\b))?(?![\d:])",
        0.85,
    ),
    Rule(
        "time_military",
        "TIME",
        r"(?i)(?:\bat|@|\bby|\btime:?|\bfrom|\bto|\buntil|\bbefore|\bafter|\baround|\b~)\s*(?P<phi>(?:[01]\d|2[0-3])[0-5]\d)(?:\s?(?:hrs?|hours|h)\b)?(?!\d)",
        0.8,
    ),
    Rule("time_hrs", "TIME", r"(?i)(?<![\d:])(?P<phi>(?:[01]\d|2[0-3])[0-5]\d\s?(?:hrs?|hours|h))\b", 0.85),
    Rule(
        "time_after_date",
        "TIME",
        r"(?<![\d/.-])\d{1,4}[/.-]\d{1,2}(?:[/.-]\d{2,4})?\s+(?P<phi>(?:[01]\d|2[0-3])[0-5]\d)(?!\d)",
        0.7,
    ),
    Rule(
        "time_before_date",
        "TIME",
        r"(?<![\d:/.-])(?P<phi>(?:[01]\d|2[0-3])[0-5]\d)\s+\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}(?!\d)",
        0.7,
    ),
    Rule("time_ampm", "TIME", r"(?i)(?<![\d:])(?:1[0-2]|0?[1-9])\s?(?:a\.m\.|p\.m\.|am|pm)(?![a-z])", 0.85),
    # --- ages over 89 (Safe Harbor aggregates them as 90+) -----------------------------------
    Rule(
        "age_years",
        "AGE",
        r"(?i)(?<![\d.])(?P<phi>9\d|1[0-1]\d)(?:\s?|-)(?:years?|yrs?|y)(?:\s?|-)(?:old|o\b|/o)",
        0.9,
    ),
    Rule(
        "age_yo",
        "AGE",
        r"(?i)(?<![\d.])(?P<phi>9\d|1[0-1]\d)\s?(?:yo|y/o|y\.o\.?|yrs?\b|years\b|year\b|yr-old|ans\b|a[ñn]os\b|jahre\b|anni\b)",
        0.9,
    ),
    Rule("age_sex", "AGE", r"(?<![\d.])(?P<phi>9\d|1[0-1]\d)\s?(?:M|F|m|f|y|Y|yM|yF|YM|YF|yo[MF])\b", 0.8),
    Rule(
        "age_label",
        "AGE",
        r"(?i)(?<![a-z])(?:age[d:]?|aged|age\s+of|[âa]ge\s*:|edad\s*:?|alter\s*:?|idade\s*:?)\s*(?P<phi>9\d|1[0-1]\d)\b",
        0.9,
    ),
    Rule("age_nonagenarian", "AGE", r"(?i)\b(?:nonagenarian|centenarian)\b", 0.7),
    # --- contacts ------------------------------------------------------------------------------
    Rule("phone_us", "CONTACT", r"(?<![\d-])(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}(?!\d)", 0.85),
    Rule("phone_intl", "CONTACT", r"(?<![\d])\+\d{1,3}[\s.-]?(?:\(0\)\s?)?\d{1,4}(?:[\s.-]?\d{2,4}){2,4}(?!\d)", 0.85),
    Rule("phone_local", "CONTACT", r"(?<![\d-])\d{3}-\d{4}(?![\d-])", 0.7),
    Rule(
        "phone_labelled",
        "CONTACT",
        r"(?i)\b(?:pager|pgr|page|beeper|bleep|ext|extension|x|tel|telephone|phone|ph|cell|mobile|fax|call\s+back|callback|vocera|spectralink)\.?\s*(?:#|no\.?|number|:)?\s*(?P<phi>\d[\d\s.-]{2,12}\d)(?!\d)",
        0.85,
    ),
    Rule("email", "CONTACT", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b", 0.9),
    # --- names ---------------------------------------------------------------------------------
    Rule("name_title", "NAME", rf"(?<![A-Za-z]){TITLE}\.?\s+(?P<phi>{PERSON})", 0.85),
    Rule(
        "name_title_lower",
        "NAME",
        r"(?i:\b(?:dr|doctor|mr|mrs|ms)\.?\s+)(?P<phi>(?!(?:and|or|the|on|at|to|in|re|was|is|with|for|of|regarding|who|office|team|service|note|report)\b)[a-z][a-z'\-]+)\b",
        0.7,
    ),
    Rule(
        "name_credential",
        "NAME",
        rf"(?<![A-Za-z'.-])(?P<phi>{PERSON_OR_LF})(?:,\s?{CREDENTIAL}|\s(?:M\.D\.|MD|MBBS|MBChB|FRCR|Ph\.?D\.?|PA-C))(?![A-Za-z])",
        0.85,
        needs=rf"[,\s]\s?{CREDENTIAL}(?![A-Za-z])",
    ),
    Rule(
        "name_caps_pair",
        "NAME",
        rf"(?<![A-Za-z'-])(?P<phi>{NOT_NAME}[A-Z][A-Z'\-]+,\s?{NOT_NAME}[A-Z][A-Z'\-]+(?:\s[A-Z]\.?)?)(?![A-Za-z])",
        0.75,
        needs=r"[A-Z]{2},\s?[A-Z]{2}",
    ),
    # A capitalised pair in the middle of a sentence ("identified as Delacroix, Hiroshi by"); reports are
    # otherwise lower case there, and eponyms are removed by the medical-term list.
    Rule(
        "name_mid_sentence",
        "NAME",
        rf"(?<=[a-z,;(] )(?P<phi>{NAME_WORD},?\s(?:{INITIAL}\s)?{NAME_WORD})(?![A-Za-z])",
        0.6,
    ),
    Rule(
        "name_label",
        "NAME",
        rf"(?i:\b{SIGN_LABEL})\b\s*[:\-]?\s*(?:(?i:by)\s+)?(?:{TITLE}\.?\s+)?(?P<phi>{PERSON_OR_LF}(?:\s?(?:,|;|/|&|and)\s?(?:{TITLE}\.?\s+)?{PERSON})*)",
        0.8,
    ),
    Rule(
        "name_label_lower",
        "NAME",
        r"(?i:\b(?:d/w|dw|discussed\s+with|spoke\s+with|paged|called|informed|notified|per)\s+)(?:(?i:dr|doctor)\.?\s+)?(?P<phi>(?!(?:the|and|or|team|patient|family|nurse|radiology|ed|icu|floor|clinician|provider|protocol|report|her|his|their|pt|on|at|with|for|resident|attending|fellow|ordering|referring|covering|primary|care|service|house|staff|doctor|dr|charge|bedside)\b)[a-z][a-z'\-]+)\b",
        0.6,
    ),
    Rule("name_relative", "NAME", rf"(?i:\b{RELATIVE})\s*,?\s*\(?(?P<phi>{PERSON})", 0.75),
    Rule("name_initials_signoff", "NAME", rf"(?m)^\s*(?:/s/|--|-|—)\s*(?P<phi>{PERSON_OR_LF})", 0.8),
    # --- locations -----------------------------------------------------------------------------
    Rule(
        "hospital",
        "LOCATION",
        r"\b(?:(?:St|Mt)\.?\s|Saint\s|Mount\s)?(?:[A-Z][A-Za-z'\u2019&.-]+\s(?:(?:of|the|and|&)\s)?){1,4}(?:Hospital|Medical\sCent(?:er|re)|Health\s(?:Cent(?:er|re)|System|Sciences\sCent(?:er|re))|Clinic|Infirmary|Healthcare|Memorial|Cancer\sCent(?:er|re)|Children's|Rehabilitation\s(?:Cent(?:er|re)|Hospital)|Nursing\sHome|Care\sHome|Urgent\sCare|Imaging(?:\sCent(?:er|re))?|Radiology\s(?:Associates|Group|Partners)|Associates|(?:Family\s|Group\s|General\s)?Practice|Medical\sGroup|Infirmary|Hospice|Polyclinic|Sanatorium|Health|Institute|(?:Correctional\s|Care\s|Detention\s)?Facility|Prison|Penitentiary)\b(?:\s(?:of|at)\s[A-Z][a-z]+(?:\s[A-Z][a-z]+)?)?(?:\s\d{1,3}[A-Z]?\b)?",
        0.85,
    ),
    # Hospital names in the word order of other languages: "Clinique Saint-Luc", "Klinikum Rechts der Isar"
    Rule(
        "hospital_foreign",
        "LOCATION",
        r"\b(?:Clinique|Klinik|Klinikum|H[ôo]tel-Dieu|H[ôo]pital|Hospital|Ospedale|Policlinico|Centre\sHospitalier|Hospital\sUniversitario|Cl[íi]nica)[ \t](?:(?:de|du|des|la|le|del|della|di|do|da|dos|das|der|St\.?|San|Santa|Santo|Sainte?|São)[ \t-])*[A-Z][\w'-]+(?:[ \t-](?:de|du|del|der|di)?[ \t]?[A-Z][\w'-]+){0,2}",
        0.8,
    ),
    Rule(
        "hospital_of",
        "LOCATION",
        r"\b(?:Hospital|Royal\sInfirmary|University|Clinique|Klinikum|Hôpital|Hospital\sUniversitario)\s(?:of|de|du|für|at)\s(?:the\s)?[A-Z][a-z]+(?:\s[A-Z][a-z]+){0,2}\b",
        0.8,
    ),
    Rule(
        "ward",
        "LOCATION",
        r"(?i:\b(?:ward|room|rm|bed|bay|floor|suite|cubicle|unit)\.?\s*#?\s*)(?P<phi>\d{1,4}[A-Za-z]?(?:-\d{1,3})?|[A-Z]\d{1,3}[A-Z]?)\b",
        0.7,
    ),
    Rule(
        "ward_compass",
        "LOCATION",
        r"\b\d{1,2}\s?(?:North|South|East|West|N|S|E|W)\b(?=\s*(?:ICU|CCU|unit|ward|floor|tower|step-?down|med|surg|telemetry|tele|[,.;)]|$))",
        0.7,
    ),
    Rule(
        "street",
        "LOCATION",
        r"\b\d{1,5}\s(?:[A-Z][a-z]+\.?\s){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Parkway|Pkwy|Highway|Hwy|Square|Sq|Circle|Cir|Crescent|Close)\b\.?(?:,?\s(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s?\w+)?(?:,\s[A-Z][a-z]+(?:\s[A-Z][a-z]+)?)?(?:,?\s[A-Z]{2}\s\d{5}(?:-\d{4})?)?",
        0.85,
    ),
    # An institution on a header line of its own, in any case ("WISHARD HEALTH - DEPARTMENT OF RADIOLOGY").
    Rule(
        "hospital_line",
        "LOCATION",
        r"(?im)^[ \t]*(?P<phi>(?:(?:st|mt)\.?[ \t]+|saint[ \t]+|mount[ \t]+)?[a-z][a-z'&.-]*(?:[ \t]+[a-z][a-z'&.-]*){0,5}?[ \t]+"
        r"(?:hospital|medical[ \t]+cent(?:er|re)|health|healthcare|clinic|infirmary)(?:[ \t]+(?:and|&)[ \t]+(?:health[ \t]+)?(?:cent(?:er|re)|clinics?|network|system))?"
        r"(?:[ \t]+(?:network|system|cent(?:er|re)|care))?)(?=[ \t]*(?:$|[-\u2013|,]))",
        0.8,
    ),
    # A street address in any case, with a directional letter or word ("455 E Main St", "8262 s main road, evansville, oh 47131").
    # House numbers have no leading zero ("at 0725" is a clock time).
    Rule(
        "street_any_case",
        "LOCATION",
        r"(?i)(?<![\d:.,/-])(?<!\d,[ \t])\b[1-9]\d{0,4}[ \t]+(?:[nsew]\.?[ \t]+|(?:north|south|east|west)[ \t]+)?(?!(?:cm|mm|views?|x|images?|ribs?|days?|weeks?|months?|years?|hours?|hrs|am|pm|of|and|the|to|in|on|at|by|with|from|for|per|over|after|since)\b)"
        r"(?:[a-z][a-z'.-]*[ \t]+){1,3}?(?:street|avenue|road|boulevard|lane|drive|court|place|terrace|parkway|highway|square|circle"
        r"|(?-i:St|ST|Ave|AVE|Rd|RD|Blvd|BLVD|Ln|LN|Dr|DR|Ct|CT|Pkwy|PKWY|Hwy|HWY|st|ave|rd|blvd|pkwy)|(?-i:dr|ln|ct)(?=,|[ \t]*(?:\n|$)))\b\.?"
        r"(?:,?[ \t]+(?:apt|apartment|suite|ste|unit|\#)\.?[ \t]?\w+)?(?:,[ \t]*[a-z]+(?:[ \t][a-z]+)?)?(?:,?[ \t]+[a-z]{2}[ \t]+\d{5}(?:-\d{4})?)?",
        0.8,
    ),
    Rule("zip", "LOCATION", r"\b[A-Z]{2}\s(?P<phi>\d{5}(?:-\d{4})?)\b", 0.7),
    Rule("postcode_uk", "LOCATION", r"\b[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}\b", 0.7),
    Rule("po_box", "LOCATION", r"(?i)\bP\.?\s?O\.?\sBox\s\d+\b", 0.85),
)


class RegexRecognizer(LocalRecognizer):
    """A Presidio recognizer running `Rule`s; a `phi` group narrows the finding to that group."""

    def __init__(self, rules: tuple[Rule, ...] = RULES):
        self.rules = rules
        self.compiled = [(r, re.compile(r.pattern, r.flags), re.compile(r.needs) if r.needs else None) for r in rules]
        super().__init__(supported_entities=sorted({r.entity for r in rules}), name="RadiologyRegexRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        out = []
        for rule, rx, needs in self.compiled:
            if (entities and rule.entity not in entities) or (needs is not None and not needs.search(text)):
                continue
            for m in rx.finditer(text):
                start, end = m.span("phi") if "phi" in rx.groupindex else m.span()
                if end > start:
                    out.append(
                        RecognizerResult(
                            rule.entity,
                            start,
                            end,
                            rule.score,
                            recognition_metadata={"recognizer_name": self.name, "rule": rule.name},
                        )
                    )
        return out
