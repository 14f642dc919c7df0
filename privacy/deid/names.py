"""Names found by their context, in any letter case.

A radiology report names people in a few places: after a label ("Patient:", "Attending:",
"referring md:"), after a role or a verb of communication ("PA K. Price", "case reviewed with
barbara small"), after a title, in DICOM person-name form ("SMITH^JOHN^A"), and on a sign-off
line ending in a credential ("will taylor, md / d: ..."). The regular-expression rules find the
capitalised forms; this recognizer reads the words after such an anchor one by one and keeps
those that can be a name, judged by the census name lists and a dictionary (`lexicon.kind`)
rather than by capital letters, so lower-case and upper-case reports are read alike.

How much evidence a word needs depends on the anchor: after a label with a colon any word that
is not a plain dictionary word will do ("Patient: stoltzfus"); after a role or verb the word must
be a census name or capitalised in mixed-case text, and a word that is also a common word
("per day", "PA lateral") is taken only beside a clearer name word or with a capital.
"""

from __future__ import annotations

import re

from presidio_analyzer import LocalRecognizer, RecognizerResult

from cxrsynth.privacy.deid.lexicon import is_given_name, kind
from cxrsynth.privacy.deid.recognizers import NON_NAME_WORDS

# Words that end a name whatever the lists say: function words, credentials, header labels.
FUNCTION_STOP = frozenset(
    """and or the a an at on by with who whom for to in of is was were are be been has had have from as per than then
    that this these those which when where while also but not no yes if via re cc i we he she they it its his her
    their our you your me us them md m.d do d.o np rn pa pa-c phd mbbs dds lpn crna rrt arrt mph facr
    today yesterday tonight am pm hours hrs telephone phone call pager ext agrees agree mrn dob id acc accession
    exam study date time location none unknown nurse resident fellow attending radiologist physician provider
    technologist tech assistant practitioner charge staff doctor dr""".split()
)
# Report vocabulary ends a name too, unless the census lists it as a name ("Small", "Lung", "Young").
HARD_STOP = FUNCTION_STOP | NON_NAME_WORDS


def _stops(tok: str) -> bool:
    low = tok.lower().rstrip(".")
    if low in FUNCTION_STOP:
        return True
    return low in NON_NAME_WORDS and kind(tok) not in ("name_only", "name_and_word")


TITLES = r"(?:dr|doctor|mr|mrs|ms|miss|mx|prof|professor)"
# A credential closing a sign-off line: followed by the end of the line, a date or a separator.
CREDENTIAL = re.compile(
    r"[ \t]*,?[ \t]*(?:m\.?d\.?|d\.?o\.?|np|rn|pa-c|ph\.?d\.?|mbbs|dds)(?![A-Za-z])(?=[ \t]*(?:$|[/,;.(]|[dt]:|\d|on\b|signed\b|date))",
    re.IGNORECASE | re.MULTILINE,
)

LABELS = (
    r"patient(?:'s)?\s+name|patient|pt\.?\s+name|pt|name|surname|first\s+name|last\s+name|given\s+name"
    r"|referring(?:\s+(?:physician|provider|md|doctor|clinician))?|ordering(?:\s+(?:physician|provider|md|clinician|doctor))?"
    r"|ordered\s+by|requested\s+by|attending(?:\s+(?:radiologist|physician))?|resident|fellow|staff(?:\s+radiologist)?"
    r"|reading\s+radiologist|radiologist|dictated\s+by(?:\s+resident)?|electronically\s+signed\s+by|e-?signed\s+by|signed\s+by"
    r"|read\s+by|interpreted\s+by|reviewed\s+by|verified\s+by|approved\s+by|transcribed\s+by|reported\s+by|performed\s+by"
    r"|technologist|tech|cc|copy\s+to|pcp|physician|provider|author|consultant|clinician|nurse"
)
# (regex, strength): a match ends where the name may start.
ANCHORS = (
    (re.compile(rf"(?i)\b(?:{LABELS})\s*:[ \t]*(?:\n[ \t]*)?(?:{TITLES}\.?\s+)?"), "label"),
    (
        re.compile(
            rf"(?i)\b(?:dictated|signed|read|interpreted|reviewed|verified|approved|transcribed|reported|finali[sz]ed"
            rf"|prelim(?:inary)?(?:\s+(?:read|interpretation))?|wet\s+read|interpretation|addendum)\s+by\s+(?:{TITLES}\.?\s+)?"
        ),
        "label",
    ),
    (re.compile(rf"(?i)\bfinal(?:i[sz]ed)?(?:\s+report)?\b[^\n]{{0,40}}?\s(?:by|-)\s+(?:{TITLES}\.?\s+)?"), "label"),
    (re.compile(rf"(?i)\b{TITLES}\.?[ \t]+"), "label"),  # same line: "Delaware Dr\nPh: ..." is a street
    (re.compile(r"(?im)^[ \t]*/s/[ \t]*"), "label"),  # an electronic signature mark
    # a role or a verb of communication, then the name on the same line
    (
        re.compile(
            r"(?i)\b(?:pa-c|pa|rn|np|lpn|crna|nurse|charge[ \t]+nurse|physician[ \t]+assistant|nurse[ \t]+practitioner|resident|fellow"
            r"|technologist|tech|attending|radiologist|provider|physician|clinician|(?:case[ \t]+)?(?:discussed|reviewed)[ \t]+with"
            r"|discussed[ \t]+(?:this|the)[ \t]+(?:case|findings)[ \t]+with|spoke[ \t]+(?:with|to)|d/w"
            r"|communicated[ \t]+to|called[ \t]+to|relayed[ \t]+to|conveyed[ \t]+to|reported[ \t]+to|given[ \t]+to|notified|paged|informed)[ \t]+"
        ),
        "role",
    ),
    # a source: "per" is also a rate ("per day") and "according to" takes documents
    (re.compile(r"(?i)\b(?:per|as[ \t]+per|according[ \t]+to)[ \t]+"), "source"),
)
# What may follow a lone name that is also a word ("nurse young", "with bell") for it to be read as a
# person: after a role or a verb, the end of the phrase; after "per", words only a person takes.
PHRASE_END = {
    "role": re.compile(r"(?im)[ \t]*(?:[,.;)]|$|(?:by|at|on|who|via)\b)"),
    "source": re.compile(r"(?i)[ \t]*(?:,?[ \t]*who\b|(?:by[ \t]+(?:tele)?phone|at|on)\b[ \t]+(?:\d|the[ \t]+time))"),
}
# The end of a header field: a name written "last, first" ends here ("Name: brown, sky   DOB: ...").
FIELD_END = re.compile(
    r"(?im)(?:[ \t]*(?:$|[|;(\[\]])|[ \t]{2,}|,?[ \t]*(?:m\.?d\.?|d\.?o\.?|np|rn|pa-c)(?![A-Za-z])|,?[ \t]*(?:ext|pager|pgr|x)\.?[ \t]*\d)"
)
# An initial between two words marks a name even when its first word is a plain word ("Sky W. Dean").
BEFORE_INITIAL = re.compile(r"[ \t]+[A-Za-z]\.?[ \t]+[A-Za-z]{2}")
# "PA" is a role and a view ("PA upright", "PA chest"): after it, report vocabulary is a view, unless
# a word that takes a person comes first ("per PA ...", "with PA ...").
VIEW_ROLE = re.compile(r"(?i)(?<!\bper )(?<!\bwith )(?<!\bto )(?<!\bby )\b(?:pa|ap)\s+$")
# A name line with no credential, over a line saying the role ("Heather Lewis\nRadiologist").
ROLE_LINE = re.compile(
    r"(?i)[ \t]*\n[ \t]*(?:staff\s+|attending\s+|diagnostic\s+)?(?:radiologist|radiology|attending|resident|fellow|physician)\b"
)
SIGNOFF_LINE = re.compile(r"(?m)^[ \t]*(?:/s/|--|-|\u2014)?[ \t]*")
CARET = re.compile(r"(?<![A-Za-z0-9^])[A-Za-z][A-Za-z'\-]*(?:\^[A-Za-z][A-Za-z'\-]*\.?)+")
DOTTED_CREDENTIAL = re.compile(r"(?i)(?:m\.d|d\.o|ph\.d|r\.n|n\.p|p\.a)\.?(?![A-Za-z])")
WORD = re.compile(r"[A-Za-z\u00c0-\u024f][A-Za-z\u00c0-\u024f'\-]*[A-Za-z\u00c0-\u024f]|[A-Za-z]\.?")


def _mixed_case(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    upper = sum(c.isupper() for c in letters)
    return 0.02 < upper / max(len(letters), 1) < 0.85


def _given_word(text: str, end: int, strength: str) -> bool:
    """Whether a plain or unknown word opening a name is a given name by what follows it: an
    initial and a word ("Sky W. Dean", "PRIYA R. BEST"), after a name label a word that is no
    plain word ("sky parsons"), after a role a census surname ending the phrase ("priya hill.")."""
    if BEFORE_INITIAL.match(text, end):
        return True
    nxt = re.match(r"[ \t]+([A-Za-z][A-Za-z'\-]+)", text[end : end + 40])
    if not nxt or _stops(nxt.group(1)):
        return False
    k = kind(nxt.group(1))
    if strength == "label":
        return k != "word_only"
    # after a role, a census surname must follow, then the end of the phrase ("tech sky free, the ...")
    return strength == "role" and (
        k == "name_only" or (k == "name_and_word" and bool(PHRASE_END["role"].match(text, end + nxt.end())))
    )


def parse_name(text: str, pos: int, strength: str, mixed: bool) -> tuple[int, int] | None:
    """The span of a name starting at `pos`, or None; see the module notes for the evidence asked."""
    i, n = pos, len(text)
    words: list[tuple[int, int, str]] = []  # (start, end, kind or "initial")
    comma_used = field_end_given = False
    while i < n and len(words) < 5:
        if DOTTED_CREDENTIAL.match(text, i):
            break
        m = WORD.match(text, i)
        if not m:
            break
        tok = m.group(0)
        if len(tok.rstrip(".")) == 1:
            if not tok[0].isalpha() or (tok[0].islower() and mixed and not words):
                break
            words.append((m.start(), m.end(), "initial"))
        else:
            if _stops(tok):
                break
            k = kind(tok)
            capital = tok[0].isupper() and mixed
            clear = any(w[2] in ("name_only", "unknown_ok") for w in words)
            if (
                k == "word_only"
                and field_end_given
                or k in ("word_only", "unknown")
                and not words
                and _given_word(text, m.end(), strength)
            ):
                k = "given_word"  # a given name no census list holds ("sky parsons"), read from what follows
            if strength == "label":
                ok = k != "word_only" or capital
            elif k in ("name_only", "given_word"):
                ok = True
            elif k == "name_and_word":
                ok = True  # provisional: the whole name is judged below
            elif k == "unknown":
                ok = capital or clear
            else:
                ok = False
            if not ok:
                break
            words.append((m.start(), m.end(), "unknown_ok" if k == "unknown" and capital else k))
        i = m.end()
        sep = re.match(r"\^|[ \t]|,[ \t]?", text[i : i + 2])
        if not sep:
            break
        if sep.group(0).startswith(","):
            # "last, first": only a given name, an initial or a capitalised word follows the comma
            nxt = WORD.match(text, i + len(sep.group(0)))
            if comma_used or len(words) != 1 or not nxt:
                break
            tok2 = nxt.group(0)
            # after a name label, any word but a stop word that ends the field ("BY ANDERSON, PRIYA", "Name: brown, sky  ")
            label_ok = (
                strength == "label"
                and not _stops(tok2)
                and (kind(tok2) != "word_only" or FIELD_END.match(text, nxt.end()))
            )
            if not (is_given_name(tok2) or len(tok2.rstrip(".")) == 1 or (tok2[0].isupper() and mixed) or label_ok):
                break
            comma_used = True
            field_end_given = label_ok and kind(tok2) == "word_only"
        i += len(sep.group(0))
    while (
        words
        and words[-1][2] == "initial"
        and len(words) > 1
        and text[words[-1][0] : words[-1][1]].lower() in ("a", "i")
    ):
        words.pop()
    if not any(w[2] != "initial" for w in words):
        return None
    named = [w for w in words if w[2] != "initial"]
    if strength in ("role", "source") and all(w[2] == "name_and_word" for w in named):
        first = text[named[0][0] : named[0][1]]
        capital = mixed and first[0].isupper()
        if VIEW_ROLE.search(text[max(0, pos - 12) : pos]) and first.lower() in NON_NAME_WORDS:
            return None  # "PA Upright": a view
        lone = len(words) == 1 and (capital or not mixed) and PHRASE_END[strength].match(text, words[-1][1])
        # otherwise words that are also common words ("per day", "rose cross") make a name only
        # capitalised in mixed-case text, as a given name followed by a census surname, or with
        # an initial between them
        if not (capital or lone) and (
            len(named) < 2 and len(words) < 2 or not is_given_name(first) and len(words) == len(named)
        ):
            return None
    return words[0][0], words[-1][1]


def _whole_line_name(text: str, span: tuple[int, int]) -> bool:
    """A sign-off mark and nothing but a name on the line ("- carol g. lamb"): a list item is
    rarely a given name and a surname, or two words around an initial."""
    if not re.match(r"[ \t]*(?:\n|$)", text[span[1] :]):
        return False
    words = re.findall(r"[A-Za-z][A-Za-z'\-]*\.?", text[span[0] : span[1]])
    return len(words) >= 2 and (is_given_name(words[0]) or any(len(w.rstrip(".")) == 1 for w in words[1:-1]))


class ContextNameRecognizer(LocalRecognizer):
    """NAME findings after labels, roles, titles, in PN caret form and on sign-off lines."""

    def __init__(self):
        super().__init__(supported_entities=["NAME"], name="ContextNameRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        mixed = _mixed_case(text)
        spans: list[tuple[int, int, str, float]] = []
        for m in CARET.finditer(text):
            spans.append((m.start(), m.end(), "ctx_caret", 0.97))
        for rx, strength in ANCHORS:
            for m in rx.finditer(text):
                got = parse_name(text, m.end(), strength, mixed)
                if got:
                    rule = "ctx_label" if strength == "label" else "ctx_role"
                    spans.append(
                        (*got, rule, 0.96 if strength == "label" else 0.95)
                    )  # above the regex rules: Presidio drops a finding inside a stronger one
        for m in SIGNOFF_LINE.finditer(text):
            got = parse_name(text, m.end(), "label", mixed)
            signed = got and (
                CREDENTIAL.match(text, got[1])
                or (m.group(0).strip() and (ROLE_LINE.match(text, got[1]) or _whole_line_name(text, got)))
            )
            if signed and re.search(r"[A-Za-z]{2,}", text[got[0] : got[1]]):
                spans.append((*got, "ctx_signoff", 0.96))
        return [
            RecognizerResult("NAME", a, b, score, recognition_metadata={"recognizer_name": self.name, "rule": rule})
            for a, b, rule, score in spans
        ]
