"""The LDM's parts, built from config with diffusers/transformers classes or read from a local folder.

Nothing here downloads: a pretrained start is a diffusers-format folder on disk (`vae/`, `unet/`,
`text_encoder/`, optionally `tokenizer/`), the layout `save_pretrained` writes.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
from torch import nn
from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

from cxrsynth.data.records import COND_DIM
from cxrsynth.errors import InputError
from cxrsynth.models.ldm.config import LDMConfig

SUBFOLDERS = ("vae", "unet", "text_encoder")


def build_vae(cfg: LDMConfig) -> AutoencoderKL:
    levels = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.image_size,
        scaling_factor=cfg.latent_scale,
    )


def build_unet(cfg: LDMConfig) -> UNet2DConditionModel:
    # Stable Diffusion v1 layout: cross-attention at every level but the coarsest.
    levels = len(cfg.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",) if levels > 1 else ("CrossAttnDownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1) if levels > 1 else ("CrossAttnUpBlock2D",)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.unet_layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=cfg.text_hidden,
        **(
            {"class_embed_type": "projection", "projection_class_embeddings_input_dim": COND_DIM}
            if cfg.label_conditioning == "vector"
            else {}
        ),
    )


def build_text_encoder(
    cfg: LDMConfig, vocab_size: int, pad_id: int = 0, bos_id: int = 2, eos_id: int = 3
) -> nn.Module:
    """Special-token ids follow `tokenizer.train_tokenizer` ([PAD], [UNK], [BOS], [EOS] first)."""
    sizes = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_tokens,
        pad_token_id=pad_id,
    )
    if cfg.text_encoder == "clip":
        return CLIPTextModel(CLIPTextConfig(**sizes, bos_token_id=bos_id, eos_token_id=eos_id))
    conf = BertConfig(**sizes)
    return BertModel(conf, add_pooling_layer=False)


def load_pretrained(folder: Path) -> dict[str, nn.Module]:
    """vae, unet and text_encoder from a local diffusers-format folder (never the hub)."""
    folder = Path(folder)
    missing = [s for s in SUBFOLDERS if not (folder / s / "config.json").is_file()]
    if missing:
        raise InputError(
            f"model.pretrained {folder}: no {', '.join(f'{m}/config.json' for m in missing)}; "
            "give a diffusers-format folder as written by save_pretrained (a checkpoint's diffusers/ folder works)."
        )
    from transformers import AutoConfig, AutoModel

    text_conf = AutoConfig.from_pretrained(folder / "text_encoder", local_files_only=True)
    text_cls = CLIPTextModel if text_conf.model_type == "clip_text_model" else AutoModel
    return {
        "vae": AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True),
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True),
        "text_encoder": text_cls.from_pretrained(folder / "text_encoder", local_files_only=True),
    }


def noise_scheduler(cfg: LDMConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction,
        **_sd_betas(cfg),
    )


def sampling_scheduler(cfg: LDMConfig, name: str):
    common = dict(
        num_train_timesteps=cfg.train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction,
        **_sd_betas(cfg),
    )
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **common)
    # skip_prk_steps: the PLMS variant Stable Diffusion (and RoentGen) samples with.
    return PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, **common)


def _sd_betas(cfg: LDMConfig) -> dict:
    # Stable Diffusion v1 beta range (scheduler_config.json of the v1 release).
    return {"beta_start": 0.00085, "beta_end": 0.012} if cfg.beta_schedule == "scaled_linear" else {}
