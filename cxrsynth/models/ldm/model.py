"""RoentGen-style latent diffusion behind the common model interface.

Chambon et al. fine-tune Stable Diffusion on MIMIC-CXR (image, impression) pairs: a frozen VAE
maps images to latents, a UNet learns to denoise latents conditioned on the text encoder's
hidden states, and images are sampled with PNDM and classifier-free guidance. Here the VAE may
also be trained on site data in its own first stage, and every part can start from a local
diffusers-format folder.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrsynth.data.records import COND_DIM, Record, condition_vector
from cxrsynth.data.text import pseudo_reports
from cxrsynth.data.transforms import frontal_images, tensor_to_images
from cxrsynth.errors import InputError
from cxrsynth.models.base import GenerativeModel, unwrap, update_average, weight_average
from cxrsynth.models.condition import Condition, as_conditions
from cxrsynth.models.ldm import prompts as P
from cxrsynth.models.ldm import tokenizer as T
from cxrsynth.models.ldm.components import (
    build_text_encoder,
    build_unet,
    build_vae,
    load_pretrained,
    noise_scheduler,
    sampling_scheduler,
)
from cxrsynth.models.ldm.config import LDMConfig

DIFFUSERS_DIR = "diffusers"


class Model(GenerativeModel):
    family = "ldm"
    label_mix_keys = ("label_counts",)
    sampling_keys = ("guidance", "sampler", "sample_steps")

    def __init__(self, config: LDMConfig):
        super().__init__(config)
        cfg = config
        self.tokenizer = None
        self.counts: Optional[dict] = None
        if cfg.pretrained is not None:
            parts = load_pretrained(cfg.pretrained)
            if (Path(cfg.pretrained) / "tokenizer").is_dir():
                self.tokenizer = T.load_local(Path(cfg.pretrained) / "tokenizer")
        else:
            # The embedding table has a fixed size so the architecture does not depend on the data.
            parts = {
                "vae": build_vae(cfg),
                "unet": build_unet(cfg),
                "text_encoder": build_text_encoder(cfg, cfg.tokenizer_vocab_size),
            }
        self._freeze_positions(parts["text_encoder"])
        trained = {"unet": True, "text_encoder": cfg.text_training == "joint", "vae": cfg.vae_training == "stage"}
        self.frozen = nn.ModuleDict()
        for name in ("unet", "text_encoder", "vae"):
            if trained[name]:
                self.nets[name] = parts[name]
            else:
                self.frozen[name] = parts[name].requires_grad_(False).eval()
        self.ema_unet = copy.deepcopy(parts["unet"]).requires_grad_(False).eval() if cfg.ema_decay > 0 else None
        # Warm-up as EMAModel's default: decay min(ema_decay, (1 + n) / (10 + n)) at diffusion step n + 1,
        # so early averages do not drag in the random init.
        self.ema = weight_average(self.ema_unet, cfg.ema_decay) if self.ema_unet is not None else None
        # Steps done in total and in the diffusion stage: they decide the stage and the EMA warm-up.
        self.register_buffer("steps_done", torch.zeros(2, dtype=torch.long))
        self.noise = noise_scheduler(cfg)
        if cfg.tokenizer == "fixed" and self.tokenizer is None:
            self._set_tokenizer(T.fixed_tokenizer())

    # ---- parts ----------------------------------------------------------------------------
    def part(self, name: str) -> nn.Module:
        """The plain module (methods like `encode` are not forwarded by Opacus wrappers; hooks on
        the leaf layers still record per-sample gradients when called through it)."""
        return unwrap(self.nets[name]) if name in self.nets else self.frozen[name]

    def _freeze_positions(self, text_encoder: nn.Module) -> None:
        if self.config.text_position_embeddings == "trained":
            return
        for name, p in text_encoder.named_parameters():
            if "position_embedding" in name or "token_type_embeddings" in name:
                p.requires_grad_(False)

    def reads_real_data(self, name: str) -> bool:
        return name in self.nets

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        lrs = {"unet": cfg.lr, "text_encoder": cfg.lr, "vae": cfg.vae_lr}
        # A network frozen whole (`train.finetune`) gets no optimizer and takes no step.
        return {
            name: torch.optim.AdamW(params, lr=lrs[name], weight_decay=cfg.weight_decay)
            for name, net in self.nets.items()
            if (params := [p for p in net.parameters() if p.requires_grad])
        }

    def train(self, mode: bool = True) -> "Model":
        super().train(mode)
        self.frozen.eval()
        if self.ema_unet is not None:
            self.ema_unet.eval()
        return self

    # ---- data-dependent setup -------------------------------------------------------------
    def setup(self, records: Sequence[Record]) -> None:
        cfg = self.config
        if self.tokenizer is None and cfg.prompt_section == "labels":
            self._set_tokenizer(T.train_tokenizer(P.template_sentences(), cfg.tokenizer, 1, cfg.tokenizer_vocab_size))
        elif self.tokenizer is None:
            texts = [P.training_prompt(r, cfg.prompt_section) for r in records]
            self._set_tokenizer(
                T.train_tokenizer(texts, cfg.tokenizer, cfg.tokenizer_min_count, cfg.tokenizer_vocab_size)
            )
        self.counts = P.label_counts(records)

    def setup_from_counts(self, counts: dict[str, int], n_reports: int) -> None:
        # Label prompts are made of the templates alone: no site's words are needed.
        self.setup(pseudo_reports(counts, n_reports) if self.config.prompt_section != "labels" else [])

    @classmethod
    def vocabulary_text(cls, config: LDMConfig, record: Record) -> str:
        """The tokenizer is fitted to the training prompts, so sites count the tokens of those
        (none with label prompts, whose words are the templates')."""
        return "" if config.prompt_section == "labels" else P.training_prompt(record, config.prompt_section)

    def fit_label_counts(self, counts: dict[str, int]) -> None:
        self.counts = P.label_counts_from_site_counts(counts)

    def _set_tokenizer(self, tok) -> None:
        rows = self.part("text_encoder").get_input_embeddings().num_embeddings
        if len(tok) > rows:
            raise InputError(
                f"model.tokenizer: its vocabulary has {len(tok)} tokens but the text encoder embeds only {rows}; "
                f"raise model.tokenizer_vocab_size to at least {len(tok)}."
            )
        self.tokenizer = tok

    def extra_state(self) -> dict:
        return {"tokenizer": T.to_json(self.tokenizer) if self.tokenizer else None, "label_counts": self.counts}

    def load_extra_state(self, extra: dict) -> None:
        if extra.get("tokenizer"):
            self._set_tokenizer(T.from_json(extra["tokenizer"]))
        self.counts = extra.get("label_counts")

    # ---- weights --------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        out = super().state()
        extra = {f"frozen.{n}": m for n, m in self.frozen.items()}
        if self.ema_unet is not None:
            extra["ema_unet"] = self.ema_unet
        for prefix, module in extra.items():
            for k, v in module.state_dict().items():
                out[f"{prefix}.{k}"] = v.detach().cpu().numpy().copy()
        out["meta.steps_done"] = self.steps_done.cpu().numpy().copy()
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        own, frozen, ema = {}, {n: {} for n in self.frozen}, {}
        for key, arr in state.items():
            if key == "meta.steps_done":
                self.steps_done.copy_(torch.as_tensor(np.asarray(arr)))
            elif key.startswith("frozen."):
                name, _, rest = key[len("frozen.") :].partition(".")
                if name not in frozen:
                    raise KeyError(f"state key {key!r}: {name} is not a frozen part of this LDM ({list(frozen)})")
                frozen[name][rest] = torch.as_tensor(np.asarray(arr))
            elif key.startswith("ema_unet."):
                ema[key[len("ema_unet.") :]] = torch.as_tensor(np.asarray(arr))
            else:
                own[key] = arr
        super().load_state(own)
        for name, sd in frozen.items():
            self.frozen[name].load_state_dict(sd, strict=True)
        if self.ema_unet is not None:
            if ema:
                self.ema_unet.load_state_dict(ema, strict=True)
            else:
                self.ema_unet.load_state_dict(self.part("unet").state_dict())

    def save_extra_files(self, out: Path) -> None:
        """A diffusers-format folder next to the checkpoint: every part loads from its local
        subfolder of `diffusers/` (`from_pretrained` with `local_files_only=True`), and the folder
        is a valid `pretrained`."""
        import diffusers

        folder = Path(out) / DIFFUSERS_DIR
        self.part("vae").save_pretrained(folder / "vae")
        self.sampling_unet().save_pretrained(folder / "unet")
        text = self.part("text_encoder")
        text.save_pretrained(folder / "text_encoder")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder / "tokenizer")
        sched = sampling_scheduler(self.config, self.config.sampler)
        sched.save_pretrained(folder / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "vae": ["diffusers", "AutoencoderKL"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", type(text).__name__],
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
            "scheduler": ["diffusers", type(sched).__name__],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")

    # ---- training -------------------------------------------------------------------------
    def _autocast(self):
        if self.config.mixed_precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _images(self, records: Sequence[Record]) -> torch.Tensor:
        x = frontal_images(records, self.config.image_size, self.device, "the LDM")
        channels = self.part("vae").config.in_channels
        return x.repeat(1, channels, 1, 1) if channels != 1 else x

    def _tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        if self.tokenizer is None:
            raise InputError(
                "the LDM has no tokenizer: call setup(training records) before training, or load a checkpoint."
            )
        return T.encode(self.tokenizer, texts, self.config.max_tokens, self.device)

    def _text_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if "text_encoder" in self.nets:
            return self.nets["text_encoder"](input_ids=ids, attention_mask=mask)[0]
        with torch.no_grad():
            return self.frozen["text_encoder"](input_ids=ids, attention_mask=mask)[0]

    def _classes(self, labels: Sequence[dict]) -> Optional[torch.Tensor]:
        """The label vectors the U-Net's time embedding takes (`label_conditioning: vector`), else None."""
        if self.config.label_conditioning != "vector":
            return None
        return (
            torch.as_tensor(np.stack([condition_vector(d) for d in labels]), device=self.device)
            if labels
            else torch.zeros(0, COND_DIM, device=self.device)
        )

    def _latents(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        with torch.no_grad():
            dist = self.part("vae").encode(x).latent_dist
            z = dist.sample() if sample else dist.mode()
        return z * self.config.latent_scale

    def _stage(self) -> tuple[str, ...]:
        """The networks the next step trains: the VAE during its warm-up steps, then the U-Net and text encoder."""
        if "vae" in self.nets and int(self.steps_done[0]) < self.config.vae_steps:
            return ("vae",) if self._trains("vae") else ()
        return tuple(n for n in ("unet", "text_encoder") if self._trains(n))

    def _trains(self, name: str) -> bool:
        return name in self.nets and any(p.requires_grad for p in self.nets[name].parameters())

    def nets_stepping(self) -> list[str]:
        return list(self._stage())

    def train_step(self, records: list[Record]) -> dict[str, float]:
        cfg = self.config
        stage = self._stage()
        in_vae_stage = stage == ("vae",)
        self.steps_done[0] += 1
        if not stage:
            return {}  # everything this stage would train is frozen (train.finetune)
        if not records:
            return self._noise_only_step(stage)
        x = self._images(records)
        if in_vae_stage:
            return self._vae_step(x)
        prompts = [P.training_prompt(r, cfg.prompt_section) for r in records]
        ids, mask, too_long = self._tokens(prompts)
        losses = {}
        if cfg.long_prompts == "filter" and any(too_long):
            keep = torch.tensor([not t for t in too_long], device=self.device)
            losses["filtered_prompts"] = float(sum(too_long))
            if not keep.any():
                return {**losses, **self._noise_only_step(stage)}
            x, ids, mask = x[keep], ids[keep], mask[keep]
        classes = self._classes([r.labels for r in records])
        if cfg.long_prompts == "filter" and any(too_long) and classes is not None:
            classes = classes[keep]
        with torch.no_grad():
            posterior = self.part("vae").encode(x).latent_dist
        for name in stage:
            self.opts[name].zero_grad(set_to_none=True)
        # Each record's loss is the mean over `noise_draws` (timestep, noise, prompt dropout) draws,
        # all in this step: under DP-SGD the per-record gradient is that mean, clipped once, so the
        # draws lower its variance at no privacy cost (DPDM's noise multiplicity).
        loss = 0.0
        for _ in range(cfg.noise_draws):
            draw_ids, draw_mask, draw_classes = self._prompt_dropout(ids, mask, classes)
            latents = posterior.sample() * cfg.latent_scale
            noise = torch.randn_like(latents)
            t = torch.randint(0, cfg.train_timesteps, (len(latents),), device=self.device)
            noisy = self.noise.add_noise(latents, noise, t)
            target = noise if cfg.prediction == "epsilon" else self.noise.get_velocity(latents, noise, t)
            with self._autocast():
                hidden = self._text_states(draw_ids, draw_mask)
                pred = self.nets["unet"](noisy, t, encoder_hidden_states=hidden, class_labels=draw_classes).sample
            loss = loss + F.mse_loss(pred.float(), target.float()) / cfg.noise_draws
        loss.backward()
        for name in stage:
            self.opts[name].step()
        self.steps_done[1] += 1
        self._update_ema()
        return {**losses, "loss": float(loss.detach())}

    def _prompt_dropout(
        self, ids: torch.Tensor, mask: torch.Tensor, classes: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The prompts with a `prompt_dropout` share replaced by the empty prompt (and no label
        vector): classifier-free guidance learns the unconditional model from them."""
        if self.config.prompt_dropout <= 0:
            return ids, mask, classes
        drop = torch.rand(len(ids), device=self.device) < self.config.prompt_dropout
        if not drop.any():
            return ids, mask, classes
        empty_ids, empty_mask, _ = self._tokens([""])
        ids = torch.where(drop[:, None], empty_ids.expand_as(ids), ids)
        mask = torch.where(drop[:, None], empty_mask.expand_as(mask), mask)
        if classes is not None:
            classes = torch.where(drop[:, None], torch.zeros_like(classes), classes)
        return ids, mask, classes

    def _vae_step(self, x: torch.Tensor) -> dict[str, float]:
        opt = self.opts["vae"]
        opt.zero_grad(set_to_none=True)
        vae = self.part("vae")
        with self._autocast():
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        rec = (recon.float() - x).abs().mean()
        kl = posterior.kl().mean()
        (rec + self.config.kl_weight * kl).backward()
        opt.step()
        return {"vae_rec": float(rec.detach()), "vae_kl": float(kl.detach())}

    def _noise_only_step(self, stage: Sequence[str]) -> dict[str, float]:
        """An empty Poisson batch: noise-only DP steps (`noise_only_step`), and the EMA follows."""
        self.noise_only_step(stage)
        if "unet" in stage:
            self.steps_done[1] += 1
            self._update_ema()
        return {}

    @torch.no_grad()
    def start_fine_tuning(self) -> None:
        """Fine-tune from the base's averaged U-Net, and restart the average's warm-up.

        A base ends its pretraining at the full decay (0.995 in ldm-tiny): kept as it was, a
        40-step DP fine-tuning would move the sampled (averaged) weights about 18% of the way,
        and the sites' data would hardly show in the release. Starting the live U-Net from the
        average, the better weights of the two, and counting the warm-up from the fine-tuning's
        first step lets the average follow the fine-tuning. Only public weights are copied:
        no privacy cost.
        """
        if self.ema_unet is None:
            return
        self.part("unet").load_state_dict(self.ema_unet.state_dict())
        self.steps_done[1] = 0

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        update_average(self.ema, int(self.steps_done[1]), self.part("unet"))
        for e, b in zip(self.ema_unet.buffers(), self.part("unet").buffers()):
            e.copy_(b)

    # ---- generation -----------------------------------------------------------------------
    def latent_size(self) -> int:
        """From the VAE itself: a pretrained one need not match `vae_channels`."""
        return self.config.image_size // 2 ** (len(self.part("vae").config.block_out_channels) - 1)

    def sampling_unet(self) -> nn.Module:
        if self.ema_unet is not None and int(self.steps_done[1]) > 0:
            return self.ema_unet
        return self.part("unet")

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        seed: int = 0,
        sampler: Optional[str] = None,
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
    ) -> list[np.ndarray]:
        """Images for prompts: seeded latents, a scheduler loop with classifier-free guidance, VAE decode."""
        cfg = self.config
        sampler, steps = sampler or cfg.sampler, steps or cfg.sample_steps
        guidance = cfg.guidance if guidance is None else guidance
        if not prompts:
            return []
        unet, vae = self.sampling_unet(), self.part("vae")
        text = self.part("text_encoder")
        ids, mask, _ = self._tokens(prompts)
        cond = text(input_ids=ids, attention_mask=mask)[0]
        empty_ids, empty_mask, _ = self._tokens([""] * len(prompts))
        uncond = text(input_ids=empty_ids, attention_mask=empty_mask)[0]
        classes = self._classes([P.labels_of(p) for p in prompts])
        if classes is not None:
            classes = torch.cat([torch.zeros_like(classes), classes]) if guidance > 1.0 else classes
        gen = torch.Generator().manual_seed(seed)
        shape = (len(prompts), unet.config.in_channels, self.latent_size(), self.latent_size())
        sched = sampling_scheduler(cfg, sampler)
        sched.set_timesteps(steps)
        latents = torch.randn(shape, generator=gen).to(self.device) * sched.init_noise_sigma
        guided = guidance > 1.0
        hidden = torch.cat([uncond, cond]) if guided else cond
        for t in sched.timesteps:
            inp = torch.cat([latents, latents]) if guided else latents
            inp = sched.scale_model_input(inp, t)
            with self._autocast():
                out = unet(inp, t, encoder_hidden_states=hidden, class_labels=classes).sample.float()
            if guided:
                out_uncond, out_cond = out.chunk(2)
                out = out_uncond + guidance * (out_cond - out_uncond)
            latents = sched.step(out, t, latents).prev_sample
        images = vae.decode(latents / cfg.latent_scale).sample.float()
        return tensor_to_images(images.mean(dim=1, keepdim=True))

    def draw_labels(self, n: int, seed: int = 0) -> Optional[list[dict]]:
        if not self.counts:
            raise InputError(
                "this LDM stores no label prevalence to draw label sets from; give prompts (--prompts FILE) or labels (--labels-from DIR)."
            )
        return P.sample_labels(self.counts, n, np.random.default_rng(seed))

    def generate(self, n: int, conditions: Optional[Sequence[Condition]] = None, seed: int = 0) -> list[Record]:
        given = as_conditions(self.draw_labels(n, seed) if conditions is None else conditions, n)
        prompts = []
        for i, c in enumerate(given):
            if c.prompt is None and c.labels is None:
                raise InputError(
                    f"condition {i}: the LDM is conditioned on a prompt (or labels, written as one) and this condition gives neither ({', '.join(c.given()) or 'nothing'})."
                )
            prompts.append(c.prompt if c.prompt is not None else P.prompt_from_labels(c.labels))
        images = self.sample(prompts, seed)
        section = "findings" if self.config.prompt_section in ("report", "labels") else self.config.prompt_section
        return [
            Record(
                record_id=f"ldm-{i}",
                patient_id="",
                study_id="",
                view="PA",
                labels=P.labels_of(p),
                image=img,
                **{section: p},
            )
            for i, (p, img) in enumerate(zip(prompts, images))
        ]

    # ---- membership audit -----------------------------------------------------------------
    @torch.no_grad()
    def member_scores(self, records: Sequence[Record]) -> np.ndarray:
        """Negative denoising loss averaged over fixed timesteps and fixed noise: a model that
        memorised a record denoises it better (Carlini et al. 2023, loss-threshold attack)."""
        cfg = self.config
        unet, text = self.sampling_unet(), self.part("text_encoder")
        gen = torch.Generator().manual_seed(cfg.member_seed)
        size = self.latent_size()
        noises = torch.randn((len(cfg.member_timesteps), unet.config.in_channels, size, size), generator=gen).to(
            self.device
        )
        scores = []
        for start in range(0, len(records), 32):
            chunk = list(records[start : start + 32])
            latents = self._latents(self._images(chunk), sample=False)
            ids, mask, _ = self._tokens([P.training_prompt(r, cfg.prompt_section) for r in chunk])
            hidden = text(input_ids=ids, attention_mask=mask)[0]
            classes = self._classes([r.labels for r in chunk])
            total = torch.zeros(len(chunk), device=self.device)
            for noise, step in zip(noises, cfg.member_timesteps):
                noise = noise.expand_as(latents)
                t = torch.full((len(chunk),), step, device=self.device, dtype=torch.long)
                target = noise if cfg.prediction == "epsilon" else self.noise.get_velocity(latents, noise, t)
                pred = unet(
                    self.noise.add_noise(latents, noise, t), t, encoder_hidden_states=hidden, class_labels=classes
                ).sample.float()
                total += ((pred - target) ** 2).flatten(1).mean(1)
            scores.append(-(total / len(cfg.member_timesteps)).cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0)
