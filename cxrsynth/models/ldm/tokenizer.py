"""The prompt tokenizer: trained offline with `tokenizers` from the de-identified training reports,
or read from a local folder. Kept as its JSON serialisation so it travels with the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cxrsynth.errors import InputError

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"


def train_tokenizer(texts: Sequence[str], kind: str, min_count: int, vocab_size: int) -> PreTrainedTokenizerFast:
    """Fit a word-level or BPE tokenizer on report texts; rare tokens (PHI that escaped
    de-identification is rare) stay out of the vocabulary."""
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_count, special_tokens=[PAD, UNK, BOS, EOS]
        )
    else:
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=min_count, special_tokens=[PAD, UNK, BOS, EOS]
        )
    _normalise(tok)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return _finish(tok)


def _normalise(tok: Tokenizer) -> None:
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()


def _finish(tok: Tokenizer) -> PreTrainedTokenizerFast:
    if tok.normalizer is None:
        _normalise(tok)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))]
    )
    return wrap(tok)


# Words of ordinary chest radiograph reports, for the `fixed` tokenizer: the same vocabulary at
# every site (token ids must agree before federated averaging) and no word taken from site data.
RADIOLOGY_WORDS = """
no yes not without with and or of the a an is are was were be been there this that these as at in on to from by for
new old prior previous comparison compared unchanged stable improved improving worsened worsening increased decreased
interval since resolved persistent persists again now still
mild mildly moderate moderately severe severely marked markedly small large tiny minimal trace subtle slight
possible possibly probable probably likely may might could cannot excluded exclude suggest suggests suggestive concerning
consistent evidence definite questionable borderline top normal abnormal limits within acute chronic unremarkable
right left bilateral bilaterally both lower upper middle mid base bases basal bibasilar basilar apical apex apices
lobe lobes lung lungs pulmonary chest thorax hemithorax perihilar hilar hila central peripheral retrocardiac lingula
heart cardiac size silhouette cardiomediastinal mediastinum mediastinal contour contours aorta aortic tortuous
enlarged enlargement cardiomegaly widened widening
effusion effusions pleural fluid costophrenic angle angles blunting blunted sharp meniscus layering
pneumothorax pneumothoraces
consolidation consolidations consolidative airspace opacity opacities opacification infiltrate infiltrates
atelectasis atelectatic collapse volume loss linear plate like subsegmental
edema congestion vascular vasculature interstitial kerley lines overload
pneumonia infection infectious aspiration process
nodule nodules nodular mass masses lesion lesions tumor
fracture fractures rib ribs displaced healed deformity spine clavicle
thickening scarring plaque plaques calcified calcification calcifications fibrosis
tube tubes line lines catheter picc endotracheal nasogastric enteric tracheostomy pacemaker leads wires sternotomy
device devices support place placement tip terminates projects position positioned appropriate
findings impression frontal lateral view views pa ap portable upright supine semi radiograph radiographs
cardiopulmonary focal diffuse patchy hazy streaky
"""


def fixed_tokenizer() -> PreTrainedTokenizerFast:
    words = list(dict.fromkeys(RADIOLOGY_WORDS.split())) + list(".,;:()-/")
    vocab = {t: i for i, t in enumerate([PAD, UNK, BOS, EOS] + words)}
    return _finish(Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK)))


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS)


def from_json(text: str) -> PreTrainedTokenizerFast:
    tok = Tokenizer.from_str(text)
    if tok.token_to_id(PAD) is not None:
        return wrap(tok)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    if fast.pad_token is None:
        # A pretrained tokenizer without a pad token (CLIP's) pads with its end token.
        fast.pad_token = fast.eos_token or fast.unk_token
    return fast


def load_local(folder: Path) -> PreTrainedTokenizerFast:
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
    except (OSError, ValueError) as e:
        raise InputError(
            f"{folder}: no usable tokenizer here ({e.__class__.__name__}); expected tokenizer.json or a CLIP vocab.json/merges.txt."
        ) from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise InputError(
            f"{folder}: tokenizer {type(tok).__name__} has no fast version; convert it with `tokenizers` first."
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def to_json(tok: PreTrainedTokenizerFast) -> str:
    return tok.backend_tokenizer.to_str()


def encode(
    tok: PreTrainedTokenizerFast, prompts: Sequence[str], max_tokens: int, device
) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """(input_ids, attention_mask) padded to max_tokens, and whether each prompt had to be cut."""
    # Each call sets padding and truncation on the backend tokenizer; they are put back, so what
    # `to_json` saves (and a base's hash) does not depend on whether the model encoded a prompt.
    backend = tok.backend_tokenizer
    padding, truncation = backend.padding, backend.truncation
    try:
        full = tok(list(prompts), add_special_tokens=True)["input_ids"]
        too_long = [len(ids) > max_tokens for ids in full]
        enc = tok(list(prompts), padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
    finally:
        if padding is None:
            backend.no_padding()
        else:
            backend.enable_padding(**padding)
        if truncation is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(**truncation)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), too_long
