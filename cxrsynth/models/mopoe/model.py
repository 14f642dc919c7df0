"""The MoPoE-VAE over frontal image (F), lateral image (L), report (T) and, optionally, labels (Y).

Training maximises the MoPoE ELBO (Sutter et al. 2021, eq. 5): a latent drawn from the uniform
mixture of the PoE posteriors of every subset of the modalities a record has, the likelihood of
each modality it has, minus beta times the mixture's KL to the prior. Every net sees the whole
batch (zeros where a modality is missing, masked out of the fusion and the likelihood) so that
per-sample DP-SGD gradients line up across nets and an empty Poisson batch still steps.

Conditions for `generate` (one `Condition` per record, models/condition.py): its `frontal` and
`lateral` images, its `prompt` as the report ("FINDINGS: ... IMPRESSION: ...") and its `labels`;
any non-empty subset of the model's modalities. The latent is drawn from the PoE posterior of the
given modalities; every modality of the returned record is decoded from it, so no input pixel or
word is copied into the synthetic output.

The modalities are `MoPoEConfig.modalities`: the paper's three by default. Data without reports
trains on [frontal, labels] (and lateral where studies have one): the labels are then a modality
of their own, so an unconditional sample decodes its labels from the same latent as its images
and `--labels-from` conditions the images on label sets. With a report modality and no labels
modality, a record's labels are read from its generated report.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxrsynth.data.labeler import finding_sentences, label_report
from cxrsynth.data.records import LABELS, Record, empty_labels
from cxrsynth.data.stream import has_images, metadata_view
from cxrsynth.data.text import Vocabulary, pseudo_reports, split_sentences
from cxrsynth.data.transforms import tensor_to_images
from cxrsynth.errors import InputError
from cxrsynth.models.base import GenerativeModel
from cxrsynth.models.condition import Condition, as_conditions
from cxrsynth.models.label_prior import LabelPrior
from cxrsynth.models.mopoe import fusion
from cxrsynth.models.mopoe.codec import LABEL_STATES, Batch, decode_labels, decode_report, make_batch, to_batch
from cxrsynth.models.mopoe.config import MoPoEConfig
from cxrsynth.models.mopoe.nets import (
    CausalTextDecoder,
    ImageDecoder,
    ImageEncoder,
    LabelDecoder,
    LabelEncoder,
    ParallelTextDecoder,
    TextEncoder,
)

log = logging.getLogger(__name__)
IMAGE_MODALITIES = ("frontal", "lateral")
NO_REPORTS = "For data without reports set model.modalities: [frontal, labels] (add lateral when the studies have lateral views): images and labels in one latent space."


def _joined(sections: tuple[str, str]) -> str:
    """(findings, impression) as one report text, as `Record.report` writes it."""
    return Record("", "", "", findings=sections[0], impression=sections[1]).report


def report_of(config: MoPoEConfig, record: Record) -> Record:
    """The record as the report expert sees it: with `report_sentences: findings`, its sections
    keep only the sentences that state a finding."""
    if config.report_sentences == "all":
        return record

    return record.with_(
        findings=" ".join(finding_sentences(record.findings)),
        impression=" ".join(finding_sentences(record.impression)),
    )


def _consistent(sections: tuple[str, str], target: dict) -> tuple[str, str]:
    """The sections without the sentences whose stated findings contradict `target`, and without
    those that only repeat findings an earlier sentence of the section stated (the impression
    may restate the findings section, as radiologists write)."""

    def stated(sentence: str) -> dict:
        said = {k: v for k, v in label_report(sentence).items() if v is not None}
        if len(said) > 1:
            # "No Finding" of one sentence is the labeler's reading of the findings it denies
            # ("No pneumothorax."), which the whole report decides; alone, a sentence states it.
            said.pop("No Finding", None)
        return said

    def edit(text: str) -> str:
        kept, seen = [], set()
        for sentence in split_sentences(text):
            said = stated(sentence)
            if any(target.get(k) != v for k, v in said.items()) or (said and said.keys() <= seen):
                continue
            kept.append(sentence)
            seen |= said.keys()
        return " ".join(kept)

    return tuple(edit(text) for text in sections)


def _label_match(said: dict, target: dict) -> int:
    """How well a report's stated labels fit a label set: labels in the same state, and the
    set's positive findings counted once more, since a report that leaves one out misses most."""
    same = sum(said.get(k) == target.get(k) for k in LABELS)
    return same + sum(said.get(k) == 1 for k in LABELS if target.get(k) == 1)


class Model(GenerativeModel):
    family = "mopoe"
    label_mix_keys = ("label_prior",)

    def __init__(self, config: MoPoEConfig):
        super().__init__(config)
        self.modalities: tuple[str, ...] = config.modalities
        self.vocab: Optional[Vocabulary] = None
        # With a labels modality, generation draws label sets from this mix and decodes every
        # other modality from their posterior, as the other families condition on label sets.
        self.prior = LabelPrior([], {}, 0)
        # The text nets need the vocabulary size; a checkpoint brings it in extra_state.
        self._build_image_nets()
        if "labels" in self.modalities:
            n, states = len(LABELS), len(LABEL_STATES)
            self.nets["enc_labels"] = LabelEncoder(n, states, config.label_hidden, config.latent_dim)
            self.nets["dec_labels"] = LabelDecoder(n, states, config.label_hidden, config.latent_dim)

    # ---- construction --------------------------------------------------------------------
    @property
    def image_modalities(self) -> tuple[str, ...]:
        return tuple(m for m in IMAGE_MODALITIES if m in self.modalities)

    @property
    def has_reports(self) -> bool:
        return "report" in self.modalities

    def _build_image_nets(self) -> None:
        c = self.config
        for m in self.image_modalities:
            self.nets[f"enc_{m}"] = ImageEncoder(c.image_size, c.channels, c.latent_dim)
            self.nets[f"dec_{m}"] = ImageDecoder(c.image_size, c.channels, c.latent_dim)

    def _build_text_nets(self, vocab: Vocabulary) -> None:
        c = self.config
        self.vocab = vocab
        decoder = CausalTextDecoder if c.text_decoder == "causal" else ParallelTextDecoder
        self.nets["enc_report"] = TextEncoder(len(vocab), c.embed_dim, c.text_channels, c.latent_dim).to(self.device)
        self.nets["dec_report"] = decoder(len(vocab), c.text_length, c.embed_dim, c.text_channels, c.latent_dim).to(
            self.device
        )

    def _refuse(self, modality: str, why: str, instead: str) -> InputError:
        return InputError(
            f"MoPoE with model.modalities {list(self.modalities)} trains a {modality} expert, and {why}. {instead}"
        )

    def setup(self, records: Sequence[Record]) -> None:
        # Text, labels and which studies have a lateral, read without decoding an image (a
        # dataset directory's records stream from its manifest); the reports are counted, not kept.
        n, meta = len(records), metadata_view(records)
        with_text = [0]

        def reports():
            for r in meta:
                text = report_of(self.config, r).report
                if text.strip():
                    with_text[0] += 1
                    yield text

        vocab = Vocabulary.build(reports(), min_count=self.config.vocab_min_count) if self.has_reports else None
        if self.has_reports and not with_text[0]:
            raise self._refuse(
                "report",
                f"none of the {n} training records has findings or impression text"
                + (
                    " that states a finding (model.report_sentences: findings)"
                    if self.config.report_sentences == "findings"
                    else ""
                ),
                NO_REPORTS,
            )
        if "lateral" in self.modalities and not has_images(records, lateral=True).any():
            log.warning(
                "MoPoE with model.modalities %s: none of the %d training records has a lateral image, so the lateral decoder stays untrained and "
                "writes noise laterals; leave lateral out of model.modalities for frontal-only data.",
                list(self.modalities),
                n,
            )
        if "labels" in self.modalities and not any(r.has_labels() for r in meta):
            raise self._refuse(
                "labels",
                f"none of the {n} training records has labels",
                "Leave labels out of model.modalities, or ingest the label columns.",
            )
        if vocab is not None:
            self._build_text_nets(vocab)
        if "labels" in self.modalities:
            self.prior = LabelPrior.fit(meta, self.config.label_pattern_min_count)

    def fit_label_counts(self, counts: dict[str, int]) -> None:
        if "labels" in self.modalities:
            self.prior = LabelPrior.from_counts(counts, self.config.label_pattern_min_count)

    def draw_labels(self, n: int, seed: int = 0) -> Optional[list[dict]]:
        """Label sets from the training (or the sites') label mix; None without a labels modality
        (generation then draws latents from the prior and reads labels from the reports)."""
        if "labels" not in self.modalities or (not self.prior.patterns and not self.prior.rest):
            return None
        return self.prior.sample(n, np.random.default_rng(seed))

    def setup_from_counts(self, counts: dict[str, int], n_reports: int) -> None:
        """The vocabulary from the sites' token counts (the records, and so their laterals and
        labels, stay at the sites)."""
        if not self.has_reports:
            return
        if not counts:
            raise self._refuse(
                "report",
                "no site shared a report word (their data hold no reports, or each word is used by too few patients)",
                NO_REPORTS,
            )
        reports = [r.report for r in pseudo_reports(counts, n_reports)]
        self._build_text_nets(Vocabulary.build(reports, min_count=self.config.vocab_min_count))

    @classmethod
    def vocabulary_text(cls, config: MoPoEConfig, record: Record) -> str:
        return report_of(config, record).report if "report" in config.modalities else ""

    def extra_state(self) -> dict:
        extra: dict = {"vocab": self.vocab.to_dict()} if self.vocab else {}
        if "labels" in self.modalities:
            extra["label_prior"] = self.prior.to_dict()
        return extra

    def load_extra_state(self, extra: dict) -> None:
        if "label_prior" in extra and "labels" in self.modalities:
            self.prior = LabelPrior.from_dict(extra["label_prior"])
        if not self.has_reports:
            return
        if "vocab" not in extra:
            raise InputError(
                "this MoPoE checkpoint has no vocabulary in extra.json; it was not written by `cxrsynth train`."
            )
        self._build_text_nets(Vocabulary.from_dict(extra["vocab"]))

    def _require_setup(self) -> None:
        if self.has_reports and self.vocab is None:
            raise InputError(
                "the MoPoE model has no vocabulary yet: call setup(train_records) or load a checkpoint first."
            )

    def reads_real_data(self, name: str) -> bool:
        return True

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        self._require_setup()
        return {name: torch.optim.Adam(net.parameters(), lr=self.config.lr) for name, net in self.nets.items()}

    # ---- the ELBO ------------------------------------------------------------------------
    def _batch(self, records: Sequence[Record]) -> Batch:
        self._require_setup()
        c = self.config
        return to_batch([report_of(c, r) for r in records], self.vocab, c.image_size, c.text_length, self.device)

    def _rec_weights(self) -> dict[str, float]:
        c = self.config
        sizes = {
            "frontal": c.image_size**2,
            "lateral": c.image_size**2,
            "report": c.text_length,
            "labels": len(LABELS),
        }
        sizes = {m: sizes[m] for m in self.modalities}
        if c.rec_weighting == "equal":
            return {m: 1.0 for m in sizes}
        ref = max(sizes.values())
        return {m: ref / s for m, s in sizes.items()}

    def _image_nll(self, loc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self.config.image_scale
        if self.config.image_likelihood == "laplace":
            per_pixel = (x - loc).abs() / s + math.log(2 * s)
        else:
            per_pixel = 0.5 * ((x - loc) / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(1)

    def _shifted(self, ids: torch.Tensor) -> torch.Tensor:
        """The decoder's input: <bos>, then the report without its last position."""
        bos = torch.full_like(ids[:, :1], self.vocab.bos_id)
        return torch.cat([bos, ids[:, :-1]], dim=1)

    def _encode(self, batch: Batch) -> tuple[dict, dict]:
        mus, logvars = {}, {}
        for m in self.modalities:
            mu, lv = self.nets[f"enc_{m}"](getattr(batch, m))
            mus[m], logvars[m] = mu, lv.clamp(-12.0, 12.0)
        return mus, logvars

    def _negative_elbo(self, batch: Batch, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Per-record terms (B,): 'loss' = weighted NLLs + beta * KL, and each term."""
        mus, logvars = self._encode(batch)
        mu, lv, valid = fusion.subset_posteriors(mus, logvars, batch.present)
        z = fusion.mixture_sample(mu, lv, valid, generator)
        weights = self._rec_weights()
        terms = {}
        for m in self.image_modalities:
            terms[f"nll_{m}"] = self._image_nll(self.nets[f"dec_{m}"](z), getattr(batch, m)) * batch.present[m]
        if self.has_reports:
            inputs = self._shifted(batch.report)
            if self.training and self.config.word_dropout > 0:
                drop = torch.rand(inputs.shape, generator=generator, device=inputs.device) < self.config.word_dropout
                inputs = inputs.masked_fill(drop & (inputs != self.vocab.pad_id), self.vocab.unk_id)
            logits = self.nets["dec_report"](z, inputs)
            terms["nll_report"] = (
                F.cross_entropy(logits, batch.report, reduction="none").sum(1) * batch.present["report"]
            )
        if "labels" in self.modalities:
            terms["nll_labels"] = (
                F.cross_entropy(self.nets["dec_labels"](z), batch.labels, reduction="none").sum(1)
                * batch.present["labels"]
            )
        terms["kl"] = fusion.mixture_kl(mu, lv, valid)
        terms["loss"] = sum(weights[m] * terms[f"nll_{m}"] for m in self.modalities) + self.config.beta * terms["kl"]
        return terms

    def train_step(self, records: list[Record]) -> dict[str, float]:
        batch = self._batch(records)
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)
        terms = self._negative_elbo(batch)
        # Sum over records / batch size, not .mean(): an empty Poisson batch must still give a
        # (zero) loss connected to every net, so that DP-SGD adds its noise and steps.
        n = max(len(batch), 1)
        (terms["loss"].sum() / n).backward()
        for opt in self.opts.values():
            opt.step()
        return {k: float(v.detach().sum()) / n for k, v in terms.items()}

    # ---- latents ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_subset(self, records: Sequence[Record], subset: str | Sequence[str]) -> np.ndarray:
        """Mean of the PoE posterior of `subset` ('LF', or modality names) per record, (N, latent).

        Every record must have every modality of the subset.
        """
        mods = fusion.BY_NAME[subset] if isinstance(subset, str) else tuple(subset)
        if not set(mods) <= set(self.modalities):
            raise InputError(f"subset {subset}: this MoPoE model has the modalities {list(self.modalities)} only.")
        out = []
        for start in range(0, len(records), 256):
            batch = self._eval_batch(records[start : start + 256], require=mods)
            mus, logvars = self._encode(batch)
            stack_mu = torch.stack([mus[m] for m in mods])
            stack_lv = torch.stack([logvars[m] for m in mods])
            mu, _ = fusion.product_of_experts(stack_mu, stack_lv, torch.ones(stack_mu.shape[:2], device=self.device))
            out.append(mu.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.latent_dim), dtype=np.float32)

    def _eval_batch(self, records: Sequence[Record], require: Sequence[str] = ()) -> Batch:
        batch = self._batch(records)
        for m in require:
            missing = [r.record_id for r, p in zip(records, batch.present[m].tolist()) if not p]
            if missing:
                raise InputError(f"record(s) {', '.join(missing[:5])} have no {m}; the {m} expert cannot encode them.")
        return batch

    @torch.no_grad()
    def member_scores(self, records: Sequence[Record]) -> np.ndarray:
        """The ELBO of each record (minus the training loss), averaged over `member_samples` latents.

        Higher means the model explains the record better, i.e. more member-like.
        """
        was_training = self.training
        self.eval()
        try:
            generator = torch.Generator(device=self.device).manual_seed(0)
            scores = np.zeros(len(records))
            for start in range(0, len(records), 64):
                batch = self._batch(records[start : start + 64])
                total = sum(self._negative_elbo(batch, generator)["loss"] for _ in range(self.config.member_samples))
                scores[start : start + len(batch)] = -(total / self.config.member_samples).cpu().numpy()
            return scores
        finally:
            self.train(was_training)

    # ---- generation ----------------------------------------------------------------------
    def probe_subsets(self) -> list[str]:
        """The subsets of the linear-probe table: those of the image and report modalities (a
        subset with the labels would be handed the answer)."""
        return [fusion.subset_name(s) for s in fusion.subsets_of([m for m in self.modalities if m != "labels"])]

    @torch.no_grad()
    def _decode(self, z: torch.Tensor, generator: torch.Generator, given: Optional[Sequence[dict]] = None) -> dict:
        """Every modality decoded from the latents. A record's label set is the one it was made
        from (`given[i]["labels"]`), else the labels modality's draw; its report is the best of
        `report_candidates` samples against that set."""
        out = {m: tensor_to_images(self.nets[f"dec_{m}"](z)) for m in self.image_modalities}
        if "labels" in self.modalities:
            # A state per label drawn from its categorical, so the labels vary as the data's do.
            probs = torch.softmax(self.nets["dec_labels"](z), dim=1).transpose(1, 2)
            states = torch.multinomial(probs.reshape(-1, len(LABEL_STATES)), 1, generator=generator).view(
                len(z), len(LABELS)
            )
            out["labels"] = [decode_labels(row) for row in states.cpu().tolist()]
            if given is not None:
                # A record made from a label set carries that set (as EMIXER's and the LDM's do).
                out["labels"] = [
                    {**empty_labels(), **g["labels"]} if g.get("labels") else decoded
                    for g, decoded in zip(given, out["labels"])
                ]
        if self.has_reports:
            k = self.config.report_candidates if "labels" in out else 1
            ids = self._write_reports(z.repeat_interleave(k, 0), generator)
            texts = [decode_report(row, self.vocab) for row in ids.cpu().tolist()]
            if "labels" in out and self.config.drop_contradicting_sentences:
                texts = [_consistent(t, out["labels"][i // k]) for i, t in enumerate(texts)]
            if k == 1:
                out["report"] = texts
            else:
                out["report"] = [
                    max(
                        texts[i * k : (i + 1) * k],
                        key=lambda sections: _label_match(label_report(_joined(sections)), target),
                    )
                    for i, target in enumerate(out["labels"])
                ]
        return out

    @torch.no_grad()
    def _write_reports(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Word ids (B, L) decoded from latents, one word at a time for the causal decoder."""
        dec, c = self.nets["dec_report"], self.config
        if c.text_decoder == "parallel":
            return dec(z, None).argmax(1)
        length = c.text_length
        out = torch.full((z.shape[0], length), self.vocab.pad_id, dtype=torch.long, device=z.device)
        for t in range(length):
            # Causal: the words up to t decide position t, so the rest need not be computed.
            start = max(0, t + 1 - dec.RECEPTIVE_FIELD)
            logits = dec(z, self._shifted(out)[:, start : t + 1], offset=start, last=True)[:, :, 0]
            if c.text_temperature > 0:
                probs = torch.softmax(logits / c.text_temperature, dim=-1)
                out[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                out[:, t] = logits.argmax(-1)
            if (out[:, : t + 1] == self.vocab.eos_id).any(1).all():
                break
        return out

    @torch.no_grad()
    def _conditional_latent(self, given: Sequence[dict], generator: torch.Generator) -> torch.Tensor:
        """One latent per condition dict, from the PoE posterior of the modalities it gives."""
        keys = set().union(*(g.keys() for g in given)) if given else set()
        unknown = keys - set(self.modalities)
        if unknown:
            hint = (
                " Label conditions need labels among model.modalities (a model trained with the labels as a modality)."
                if "labels" in unknown
                else ""
            )
            raise InputError(
                f"this MoPoE model's conditions take its modalities {', '.join(self.modalities)}; got {', '.join(sorted(map(str, unknown)))}.{hint}"
            )
        if any(not g for g in given):
            raise InputError(
                f"an empty MoPoE condition: give at least one of {', '.join(self.modalities)} (or no conditions for unconditional samples)."
            )
        c = self.config
        batch = make_batch(
            [g.get("frontal") for g in given],
            [g.get("lateral") for g in given],
            [g.get("report") or "" for g in given],
            self.vocab,
            c.image_size,
            c.text_length,
            self.device,
            [g.get("labels") for g in given],
        )
        mus, logvars = self._encode(batch)
        stack_mu = torch.stack([mus[m] for m in self.modalities])
        stack_lv = torch.stack([logvars[m] for m in self.modalities])
        mask = torch.stack([batch.present[m] for m in self.modalities])
        mu, lv = fusion.product_of_experts(stack_mu, stack_lv, mask)
        eps = torch.randn(mu.shape, generator=generator, device=self.device)
        return mu + torch.exp(0.5 * lv) * eps

    @torch.no_grad()
    def generate(self, n: int, conditions: Optional[Sequence[Condition]] = None, seed: int = 0) -> list[Record]:
        self._require_setup()
        conds = as_conditions(conditions, n)
        was_training = self.training
        self.eval()
        try:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            if conds is None:
                z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
            else:
                # The modalities a condition gives: its prompt is the report modality's text.
                given = [
                    {
                        m: v
                        for m, v in (
                            ("labels", c.labels),
                            ("report", c.prompt),
                            ("frontal", c.frontal),
                            ("lateral", c.lateral),
                        )
                        if v is not None
                    }
                    for c in conds
                ]
                z = self._conditional_latent(given, generator)
            out = self._decode(z, generator, given if conds is not None else None)
        finally:
            self.train(was_training)
        records = []
        for i in range(n):
            findings, impression = out["report"][i] if self.has_reports else ("", "")
            rec = Record(
                record_id=f"mopoe-{seed}-{i}",
                patient_id="",
                study_id="",
                view="PA",
                findings=findings,
                impression=impression,
                image=out["frontal"][i],
                lateral=out["lateral"][i] if "lateral" in out else None,
            )
            labels = (
                out["labels"][i]
                if "labels" in out
                else label_report(rec.report)
                if self.has_reports
                else empty_labels()
            )
            records.append(rec.with_(labels=labels))
        return records

    def report_from_frontal(self, images: Sequence[np.ndarray], seed: int = 0) -> list[str]:
        """A report (FINDINGS/IMPRESSION text) for each frontal image."""
        return [r.report for r in self.generate(len(images), [Condition(frontal=im) for im in images], seed)]

    def images_from_report(self, reports: Sequence[str], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """A (frontal, lateral) pair of uint8 images for each report text."""
        return [
            (r.image, r.lateral) for r in self.generate(len(reports), [Condition(prompt=t) for t in reports], seed)
        ]

    def lateral_from_frontal(self, images: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
        """A lateral view for each frontal image."""
        return [r.lateral for r in self.generate(len(images), [Condition(frontal=im) for im in images], seed)]
