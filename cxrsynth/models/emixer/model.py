"""EMIXER (Biswal et al., MLHC 2022) behind the common model interface.

One `train_step` is one discriminator step on one batch of real records; every `d_steps`-th
step also updates G (EMIXER sec. 4: two D steps per G step). Keeping one real batch per step
keeps DP-SGD accounting honest: each optimizer step of a real-data network sees exactly one
Poisson-sampled batch.

Per-sample gradients: all real-data networks are updated from one backward pass per step. The
fake images of that step are paired with the real records (fake i carries real i's labels), so
Opacus sums the real, fake and rotation passes of record i into one per-sample gradient that is
clipped once. G's step runs the discriminators and F with their parameters frozen and the Opacus
hooks off, so it leaves no grad_sample behind on them.

Label-matched synthetic pairs (`f_synthetic_pairs`, an addition to the paper): F is also
teacher-forced on (fake i, report of real i), fake i being drawn from real i's labels. Trained on
real pairs alone, F reads generated images poorly (their texture differs), and the reports it
writes for them barely follow the labels; with these pairs it learns to read the findings G draws.
Only labeled records count (an unlabeled record's fake was drawn from sampled labels). Record i's
synthetic pass joins its per-sample gradient, so DP-SGD clips it with the rest of record i.

Moving average of G (`g_ema`, BigGAN): a second generator holds the average of G's weights and
keeps its own batch-norm statistics by running on every step's labels. It generates, and it draws
the synthetic pairs, so F learns to read the slowly moving generator that writes the release
rather than the one the discriminators chase from step to step.

Report-free data (`reports: none`, not in the paper): G and D_image alone, a label-conditioned
image GAN with the rotation head; F, D_report and D_joint are not built, and the synthetic
records carry images and labels without report text.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxrsynth.data.records import Record
from cxrsynth.data.text import Vocabulary
from cxrsynth.data.transforms import frontal_images, tensor_to_images
from cxrsynth.errors import InputError
from cxrsynth.models.base import GenerativeModel, unwrap, update_average, weight_average
from cxrsynth.models.condition import Condition, as_conditions
from cxrsynth.models.emixer.config import EmixerConfig
from cxrsynth.models.emixer.discriminators import ROTATIONS, DImage, DJoint, DReport, rotate
from cxrsynth.models.emixer.generator import Generator
from cxrsynth.models.emixer.labels import condition_tensor
from cxrsynth.models.emixer.losses import d_loss, g_loss
from cxrsynth.models.emixer.report import (
    IMP,
    ReportDecoder,
    build_vocabulary,
    encode_reports,
    grid_to_text,
    report_sentences,
    vocabulary_from_counts,
)
from cxrsynth.models.label_prior import LabelPrior

REAL_DATA_NETS = ("report_decoder", "d_image", "d_report", "d_joint")


@contextlib.contextmanager
def frozen(*nets: torch.nn.Module):
    """Parameters without gradients and Opacus hooks off, so a pass through these nets leaves no grad_sample."""
    saved = []
    for net in nets:
        saved.append([p.requires_grad for p in net.parameters()])
        for p in net.parameters():
            p.requires_grad_(False)
        if hasattr(net, "disable_hooks"):
            net.disable_hooks()
    try:
        yield
    finally:
        for net, flags in zip(nets, saved):
            for p, flag in zip(net.parameters(), flags):
                p.requires_grad_(flag)
            if hasattr(net, "enable_hooks"):
                net.enable_hooks()


class Model(GenerativeModel):
    family = "emixer"
    label_mix_keys = ("label_prior",)

    def __init__(self, config: EmixerConfig):
        super().__init__(config)
        self.nets["generator"] = Generator(config)
        if config.g_ema > 0:
            self.nets["generator_ema"] = Generator(config)
            self.nets["generator_ema"].load_state_dict(self.nets["generator"].state_dict())
            # A copy of G until `g_ema_start` G updates are done, then a constant decay (BigGAN: no warm-up).
            self.ema = weight_average(
                self.nets["generator_ema"], config.g_ema, min_decay=config.g_ema, update_after_step=config.g_ema_start
            )
        # F before D_image: the order decides which initial weights a seed gives.
        writes = config.reports == "generate"
        if writes:
            self.nets["report_decoder"] = ReportDecoder(config)
        self.nets["d_image"] = DImage(config)
        if writes:
            self.nets["d_report"] = DReport(config)
            self.nets["d_joint"] = DJoint(config)
        self.real_nets = tuple(n for n in REAL_DATA_NETS if n in self.nets)
        self.vocab: Optional[Vocabulary] = None
        self.prior = LabelPrior([], {}, 0)
        self.step_count = 0
        self._rng = np.random.default_rng(0)
        self._warned_f_steps = False

    # ---- data-dependent setup ---------------------------------------------------------------
    @property
    def writes_reports(self) -> bool:
        return self.config.reports == "generate"

    @classmethod
    def vocabulary_text(cls, config: EmixerConfig, record: Record) -> str:
        """Only the sentences F learns from count toward a shared vocabulary (sign-offs and
        comparison lines would otherwise bring their words into it); nothing without F."""
        if config.reports == "none":
            return ""
        sents = report_sentences(record, config.report_sentences)
        return " ".join(t for sent in sents for t in sent if t != IMP)

    def setup(self, records: Sequence[Record]) -> None:
        cfg = self.config
        if self.writes_reports:
            if not any(r.report.strip() for r in records):
                raise InputError(
                    self._no_reports(f"none of the {len(records)} training records has findings or impression text")
                )
            self.vocab = build_vocabulary(records, cfg.vocab_min_count, cfg.vocab_size, cfg.report_sentences)
        self.prior = LabelPrior.fit(records, cfg.label_pattern_min_count)

    @staticmethod
    def _no_reports(why: str) -> str:
        return (
            f"EMIXER with model.reports: generate learns to write reports from the training reports, and {why}. "
            "For data without reports set model.reports: none (an image GAN conditioned on the labels alone)."
        )

    def setup_from_counts(self, counts: dict[str, int], n_reports: int) -> None:
        """The sites counted tokens of `vocabulary_text`, already filtered to F's sentences; the
        vocabulary is taken from the counts as they are (filtering pseudo-reports again would
        drop words). The label mix comes later, from `fit_label_counts`."""
        if not self.writes_reports:
            return
        if not counts:
            raise InputError(
                self._no_reports(
                    "no site shared a report word (their data hold no reports, or each word is used by too few patients)"
                )
            )
        self.vocab = vocabulary_from_counts(counts, self.config.vocab_min_count, self.config.vocab_size)

    def fit_label_counts(self, counts: dict[str, int]) -> None:
        self.prior = LabelPrior.from_counts(counts, self.config.label_pattern_min_count)

    def extra_state(self) -> dict:
        return {
            "vocabulary": self.vocab.to_dict() if self.vocab else None,
            "label_prior": self.prior.to_dict(),
            "step": self.step_count,
        }

    def load_extra_state(self, extra: dict) -> None:
        self.vocab = Vocabulary.from_dict(extra["vocabulary"]) if extra.get("vocabulary") else None
        if "label_prior" in extra:
            self.prior = LabelPrior.from_dict(extra["label_prior"])
        self.step_count = int(extra.get("step", 0))

    def _need_vocab(self) -> Vocabulary:
        if self.vocab is None:
            raise InputError(
                "the EMIXER model has no vocabulary: call setup(training records) before training, or load a checkpoint."
            )
        return self.vocab

    # ---- training ---------------------------------------------------------------------------
    def reads_real_data(self, name: str) -> bool:
        return name in REAL_DATA_NETS

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        lrs = {
            "generator": cfg.lr_g,
            "report_decoder": cfg.lr_f,
            "d_image": cfg.lr_d,
            "d_report": cfg.lr_d,
            "d_joint": cfg.lr_d,
        }
        betas = {"report_decoder": (0.9, 0.999)}
        return {
            name: torch.optim.Adam(
                net.parameters(), lr=lrs[name], betas=betas.get(name, (cfg.adam_beta1, cfg.adam_beta2)), eps=1e-6
            )
            for name, net in self.nets.items()
            if name != "generator_ema"
        }

    def _z(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn(n, self.config.z_dim, generator=generator).to(self.device)

    def train_step(self, records: list[Record]) -> dict[str, float]:
        if not records:
            self.noise_only_step(self.real_nets)
            return {}
        cfg, nets, opts = self.config, self.nets, self.opts
        vocab = self._need_vocab() if self.writes_reports else None
        self.step_count += 1
        b = len(records)
        real = frontal_images(records, self.config.image_size, self.device, "EMIXER")
        y = condition_tensor([r.labels for r in records], self.device)
        ids = counts = fake_onehot = None
        if self.writes_reports:
            ids, counts = encode_reports(records, vocab, cfg.max_sentences, cfg.max_words, cfg.report_sentences)
            ids, counts = ids.to(self.device), counts.to(self.device)

        # Fake i is conditioned on real i's labels, or on sampled labels where real i has none;
        # D then sees it with real i's condition vector, so labeled and unlabeled look alike.
        sampled = condition_tensor(self.prior.sample(b, self._rng), self.device)
        y_gen = torch.where(y[:, -1:] > 0, y, sampled)
        with torch.no_grad():
            z = self._z(b)
            fake = nets["generator"](z, y_gen)
            if self.writes_reports:
                _, _, fake_onehot = unwrap(nets["report_decoder"]).decode(fake, vocab)
            synthetic = nets["generator_ema"](z, y_gen) if "generator_ema" in nets else fake

        rot_k = torch.randint(0, ROTATIONS, (b,), device=self.device)
        for name in self.real_nets:
            opts[name].zero_grad(set_to_none=True)
        losses = self.real_data_losses(real, y, ids, counts, fake, fake_onehot, rot_k, synthetic)
        self._weighted_sum(losses).backward()
        for name in self.real_nets:
            opts[name].step()
        losses = {k: v.item() for k, v in losses.items()}
        if self._extra_decoder_updates():
            losses["f_report"] = self._extra_decoder_steps(real, ids, counts, synthetic, y[:, -1])
        elif cfg.f_steps > 1 and self.writes_reports and not self._warned_f_steps:
            warnings.warn(
                f"model.f_steps is {cfg.f_steps}, but the report decoder trains under DP-SGD: one update per sampled batch, since the privacy accountant counts one per batch.",
                stacklevel=2,
            )
            self._warned_f_steps = True
        if self.step_count % cfg.d_steps == 0:
            losses.update(self._generator_step(b))
        return losses

    def empty_share_step(self) -> dict[str, float]:
        """The exchanges of the other ranks' step (real-data networks, F's further updates, the
        generator's update every `d_steps`), with no records here; the average follows G."""
        self.noise_only_step(self.real_nets)
        for _ in range(self._extra_decoder_updates()):
            self.noise_only_step(["report_decoder"])
        self.step_count += 1
        if self.step_count % self.config.d_steps == 0:
            self.noise_only_step(["generator"])  # a plain optimizer: the other ranks' gradients
            self._update_ema()
        return {}

    def _extra_decoder_updates(self) -> int:
        """F's updates a step beyond the first (`f_steps - 1`): only when F writes reports and
        trains without DP-SGD, whose accountant counts one update per sampled batch."""
        cfg = self.config
        if cfg.f_steps <= 1 or not self.writes_reports:
            return 0
        decoder = self.nets["report_decoder"]
        return cfg.f_steps - 1 if unwrap(decoder) is decoder else 0

    def _extra_decoder_steps(self, real, ids, counts, synthetic, labeled) -> float:
        """F's further `f_steps - 1` teacher-forced updates on this step's batch; the last loss."""
        opt = self.opts["report_decoder"]
        for _ in range(self.config.f_steps - 1):
            opt.zero_grad(set_to_none=True)
            losses = self._decoder_losses(real, synthetic, ids, counts, labeled)
            self._weighted_sum(losses).backward()
            opt.step()
        return losses["f_report"].item()

    def _weighted_sum(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The losses of the real-data networks as one objective (the rotation and synthetic-pair
        losses weighted, the rest at 1)."""
        weights = {"d_rotation": self.config.rot_weight_d, "f_synthetic": self.config.f_synthetic_pairs}
        return sum(weights.get(k, 1.0) * v for k, v in losses.items())

    def _decoder_losses(self, real, synthetic, ids, counts, labeled) -> dict[str, torch.Tensor]:
        """F's teacher-forced loss on the real pairs and, with `f_synthetic_pairs`, on the
        label-matched synthetic pairs (labeled records only)."""
        decoder, pad_id = unwrap(self.nets["report_decoder"]), self._need_vocab().pad_id
        losses = {"f_report": decoder.loss(real, ids, counts, pad_id)}
        if self.config.f_synthetic_pairs > 0:
            losses["f_synthetic"] = decoder.loss(synthetic, ids, counts, pad_id, weight=labeled)
        return losses

    def real_data_losses(
        self, real, y, ids, counts, fake, fake_onehot, rot_k, synthetic=None
    ) -> dict[str, torch.Tensor]:
        """The losses of every real-data network on one batch; their sum is backpropagated once.

        Each network runs on batches of the same records in the same order (real, then the
        paired fakes, then the rotated reals), so Opacus sums record i's passes into one
        per-sample gradient. Unweighted: the caller weighs the rotation loss. `synthetic`: the
        images of F's synthetic pairs (default: `fake`). Without reports (`reports: none`) only
        D_image's losses; `ids`, `counts` and `fake_onehot` are then None.
        """
        cfg, nets = self.config, self.nets
        d_img = nets["d_image"]
        image = {
            "d_image": d_loss(d_img(real, y), d_img(fake, y), cfg.adversarial_loss),
            "d_rotation": F.cross_entropy(unwrap(d_img).rotation(rotate(real, rot_k)), rot_k),
        }
        if not self.writes_reports:
            return image
        d_rep, d_jnt = nets["d_report"], nets["d_joint"]
        real_onehot = F.one_hot(ids, cfg.vocab_size).float()
        return {
            **image,
            "d_report": d_loss(d_rep(real_onehot), d_rep(fake_onehot), cfg.adversarial_loss),
            "d_joint": d_loss(d_jnt(real, real_onehot), d_jnt(fake, fake_onehot), cfg.adversarial_loss),
            **self._decoder_losses(real, fake if synthetic is None else synthetic, ids, counts, y[:, -1]),
        }

    def _generator_step(self, b: int) -> dict[str, float]:
        cfg, vocab, nets = self.config, self.vocab, self.nets
        opt = self.opts["generator"]
        opt.zero_grad(set_to_none=True)
        with frozen(*(nets[n] for n in self.real_nets)):
            y = condition_tensor(self.prior.sample(b, self._rng), self.device)
            fake = nets["generator"](self._z(b), y)
            rot_k = torch.randint(0, ROTATIONS, (b,), device=self.device)
            adv_img = g_loss(nets["d_image"](fake, y), cfg.adversarial_loss)
            rot = F.cross_entropy(unwrap(nets["d_image"]).rotation(rotate(fake, rot_k)), rot_k)
            losses = {"g_image": adv_img, "g_rotation": rot}
            total = adv_img + cfg.rot_weight_g * rot
            if self.writes_reports:
                _, _, onehot = unwrap(nets["report_decoder"]).decode(fake, vocab, soft=True)
                losses["g_report"] = g_loss(nets["d_report"](onehot), cfg.adversarial_loss) + g_loss(
                    nets["d_joint"](fake, onehot), cfg.adversarial_loss
                )
                total = total + cfg.report_adv_weight * losses["g_report"]
            total.backward()
        opt.step()
        self._update_ema()
        for name in self.real_nets:
            self.opts[name].zero_grad(set_to_none=True)
        return {k: v.item() for k, v in losses.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Move the average toward G after a G update (a copy of G for the first `g_ema_start`)."""
        if "generator_ema" not in self.nets:
            return
        update_average(self.ema, self.step_count // self.config.d_steps, self.nets["generator"])

    def generator(self) -> torch.nn.Module:
        """The generator that writes synthetic records: the moving average when there is one."""
        return self.nets["generator_ema"] if "generator_ema" in self.nets else self.nets["generator"]

    # ---- generation and audit ---------------------------------------------------------------
    @contextlib.contextmanager
    def _evaluating(self):
        modes = {name: net.training for name, net in self.nets.items()}
        self.nets.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for name, net in self.nets.items():
                net.train(modes[name])

    def draw_labels(self, n: int, seed: int = 0) -> Optional[list[dict]]:
        return self.prior.sample(n, np.random.default_rng(seed))

    def generate(self, n: int, conditions: Optional[Sequence[Condition]] = None, seed: int = 0) -> list[Record]:
        vocab = self._need_vocab() if self.writes_reports else None
        given = as_conditions(conditions, n)
        if given is None:
            labels = self.prior.sample(n, np.random.default_rng(seed))
        else:
            missing = [i for i, c in enumerate(given) if c.labels is None]
            if missing:
                raise InputError(
                    f"condition {missing[0]}: EMIXER is conditioned on labels and this condition gives none ({', '.join(given[missing[0]].given()) or 'nothing'}); give labels."
                )
            labels = [c.labels for c in given]
        gen = torch.Generator().manual_seed(seed)
        with self._evaluating():
            images = self.generator()(self._z(n, gen), condition_tensor(labels, self.device))
            if self.writes_reports:
                ids, counts, _ = unwrap(self.nets["report_decoder"]).decode(images, vocab, generator=gen)
        texts = grid_to_text(ids.cpu(), counts.cpu(), vocab) if self.writes_reports else [("", "")] * n
        return [
            Record(
                record_id=f"gen-{i}",
                patient_id=f"gen-{i}",
                study_id=f"gen-{i}",
                findings=f,
                impression=imp,
                labels=lab,
                image=img,
            )
            for i, (img, (f, imp), lab) in enumerate(zip(tensor_to_images(images), texts, labels))
        ]

    def member_scores(self, records: Sequence[Record]) -> np.ndarray:
        """D_image(I, y) + D_joint(I, S) per record (D_image alone without reports); members tend to score higher."""
        if not records:
            return np.zeros(0)
        cfg = self.config
        with self._evaluating():
            x = frontal_images(records, self.config.image_size, self.device, "EMIXER")
            y = condition_tensor([r.labels for r in records], self.device)
            score = self.nets["d_image"](x, y)
            if self.writes_reports:
                ids, _ = encode_reports(
                    records, self._need_vocab(), cfg.max_sentences, cfg.max_words, cfg.report_sentences
                )
                score = score + self.nets["d_joint"](x, F.one_hot(ids.to(self.device), cfg.vocab_size).float())
        return score.cpu().numpy().astype(np.float64)
