"""Every setting of a run, as frozen pydantic models, loaded from YAML.

One YAML describes a whole run: data, model, training, DP, federation and audit policy.
`--config` takes a YAML path or a preset name (`emixer-tiny`, `ldm-paper`, ...). A YAML may
start from a preset with `preset: <name>` and override any key. Unknown keys, wrong types and
out-of-range values are refused with a `ConfigError` naming the file, the key and what was
expected (exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from cxrsynth.errors import ConfigError, InputError
from cxrsynth.models import registry

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PhantomConfig(Strict):
    """The embedded phantom data used when no dataset path is given."""

    n: int = Field(300, ge=1, le=1_000_000, description="number of studies")
    sites: int = Field(3, ge=1, le=64)
    seed: int = 0
    image_size: int = Field(64, ge=16, le=1024)
    lateral: bool = True


class DataConfig(Strict):
    path: Optional[Path] = Field(None, description="a dataset directory (manifest.csv); none: phantom data")
    phantom: PhantomConfig = PhantomConfig()
    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of patients held out (by patient)")
    labeled_fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of training records whose labels are used")
    split_seed: int = 0


class TrainConfig(Strict):
    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="0: only at the end")
    out: Path = Path("runs/train")
    num_threads: Optional[int] = Field(None, ge=1, description="torch CPU threads; none: torch's default")
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="DataLoader processes decoding images ahead of the step; 0: in the training process",
    )
    init_from: Optional[Path] = Field(
        None, description="a base checkpoint (`cxrsynth pretrain`) to fine-tune instead of training from scratch"
    )
    init_sha256: Optional[str] = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="the base's SHA-256 (cxrsynth.pretrained.base_sha256); sites refuse a base that hashes otherwise",
    )
    finetune: tuple[str, ...] = Field(
        ("*",),
        min_length=1,
        description="glob patterns over '<network>.<parameter>' names that fine-tuning updates; the rest stay frozen",
    )
    finetune_lr: Optional[float] = Field(
        None,
        gt=0,
        description="learning rate of every optimizer in a run that starts from a base (init_from / init_sha256); none: the model's own",
    )


class DPConfig(Strict):
    """DP-SGD (Opacus) on the modules that read real data."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    epsilon_budget: Optional[float] = Field(None, gt=0.0, description="a site refuses to train past it")
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    grad_sample: Literal["hooks", "functorch", "bookkeeping"] = Field(
        "bookkeeping",
        description="how the clipped gradient sum is computed: Opacus' per-layer per-sample gradients (hooks), torch.func's vmap over every layer (functorch), or per-record norms and one clipped sum per layer from each layer's inputs and output gradients (bookkeeping, privacy/bookkeeping.py); the same clipped gradient, different speed",
    )
    seeded_noise: bool = Field(
        False,
        description="true: the Gaussian noise is drawn from the run's seed (reproducible runs, for tests and benchmarks); false: from the operating system's entropy, since whoever knows the seed (the coordinator) could draw the same noise and take it off",
    )
    privacy_unit: Literal["patient", "study"] = Field(
        "patient",
        description="what epsilon protects: a patient (all their studies; batches sample patients, one study each) or one study",
    )


class SecAggConfig(Strict):
    """Flower's SecAgg+ (Bell et al., CCS 2020): the coordinator learns only the weighted sum of the
    sites' updates. Each site adds pairwise masks that cancel in the sum and a private mask whose
    seed the other sites hold in Shamir shares; a site that drops out is recovered from them."""

    num_shares: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="share of the round's sites each site hands its mask secrets to (its neighbours); 1.0: all of them",
    )
    reconstruction_threshold: float = Field(
        0.67,
        gt=0.0,
        le=1.0,
        description="share of those neighbours needed to rebuild a secret; above one half, so no split of the neighbours yields both of a site's secrets",
    )
    clipping_range: float = Field(
        8.0,
        gt=0.0,
        description="each coordinate of a site's weighted update (local minus global weights) is clipped to +-this before quantization",
    )
    quantization_range: int = Field(
        2**22, ge=2**8, description="levels of the quantizer over [-clipping_range, clipping_range]"
    )
    modulus_range: int = Field(
        2**32,
        ge=2**9,
        le=2**32,
        description="the masks' ring; a power of 2 larger than quantization_range times the number of sites",
    )
    max_weight: Optional[float] = Field(
        None,
        gt=0.0,
        description="weight scale of num-examples; none: the largest record count a site reported (1000 before any)",
    )

    @model_validator(mode="after")
    def _ring_holds_the_sum(self):
        if self.modulus_range & (self.modulus_range - 1):
            raise ValueError(f"modulus_range {self.modulus_range} is not a power of 2")
        if self.modulus_range <= self.quantization_range:
            raise ValueError(
                f"modulus_range {self.modulus_range} must exceed quantization_range {self.quantization_range}"
            )
        return self


class FederationConfig(Strict):
    sites: int = Field(3, ge=1, le=64)
    rounds: int = Field(3, ge=1)
    local_steps: int = Field(20, ge=1)
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    proximal_mu: float = Field(0.01, ge=0.0, description="FedProx")
    server_lr: float = Field(0.01, gt=0.0, description="FedAdam")
    min_sites: int = Field(2, ge=1, description="a round with fewer results fails the run")
    partition: Literal["by-site", "iid", "dirichlet"] = "by-site"
    dirichlet_alpha: float = Field(0.5, gt=0.0)
    reject_norm_factor: float = Field(
        10.0, gt=1.0, description="reject updates whose norm exceeds this times the round median"
    )
    client_dp: Literal["off", "fixed", "adaptive"] = "off"
    client_dp_noise: float = Field(0.0, ge=0.0)
    client_dp_clip: float = Field(10.0, gt=0.0)
    vocab_min_count: int = Field(
        10,
        ge=1,
        description="a site shares a report token's count only when that many of its patients have it (rare words never leave)",
    )
    round_timeout: float = Field(3600.0, gt=0.0, description="seconds the server waits for a round's replies")
    acquisition: bool = Field(
        False,
        description="sites share their frontal images' mean grey-level quantiles (with DP: the Gaussian mechanism, in their ledger) and generation renders each synthetic study in one site's look (cxrsynth.models.acquisition)",
    )
    acquisition_clip: float = Field(
        0.6, gt=0.0, description="L2 bound of one patient's quantile vector about the centre"
    )
    acquisition_noise: float = Field(
        4.0, gt=0.0, description="with DP: the Gaussian mechanism's noise multiplier for the quantile sum"
    )
    secure_aggregation: Literal["off", "secagg+"] = Field(
        "off", description="secagg+: the coordinator sees only the sum of the sites' updates (server/secagg.py)"
    )
    secagg: SecAggConfig = SecAggConfig()
    out: Path = Path("runs/fl")

    @model_validator(mode="after")
    def _secure_aggregation_fits(self):
        if self.secure_aggregation == "off":
            return self
        if self.client_dp != "off":
            raise ValueError(
                f"client_dp {self.client_dp!r} clips and noises each site's update at the server, which secure aggregation hides from it; "
                "use dp (DP-SGD at each site) with secure_aggregation, or set client_dp: off"
            )
        if self.min_sites < 2:
            raise ValueError(
                "secure aggregation needs at least 2 sites in a round (min_sites >= 2): the sum of one update is that update"
            )
        if self.sites * self.secagg.quantization_range >= self.secagg.modulus_range:
            raise ValueError(
                f"secagg.modulus_range {self.secagg.modulus_range} cannot hold the sum of {self.sites} sites' quantized updates "
                f"(quantization_range {self.secagg.quantization_range}); raise it or lower quantization_range"
            )
        return self


# The checks of the synthetic sample, which a steward may leave out (AuditPolicy.skip) ...
SAMPLE_CHECKS = (
    "image_copies",
    "image_closeness",
    "text_rare_ngrams",
    "text_near_duplicates",
    "text_embedding",
    "phi",
    "membership",
    "dp_ledger",
    "label_fidelity",
    "report_labels",
)
# ... and every check of an audit: with the steward's register of earlier audits of the same model
# (cxrsynth.privacy.audit.register), which no policy leaves out.
AUDIT_CHECKS = SAMPLE_CHECKS + ("earlier_audits",)


class AuditPolicy(Strict):
    """Release-gate thresholds (privacy/audit). Defaults are argued in the README (privacy audit)."""

    # Image memorization. A copy is a synthetic image whose nearest training image is closer than
    # copy_margin x the copy_quantile of holdout-to-train nearest-neighbour distances: calibrated on
    # the site's own unseen patients, never a hand-set distance.
    max_copy_rate: float = Field(0.001, ge=0.0, le=1.0)
    copy_quantile: float = Field(
        0.01, gt=0.0, lt=0.5, description="copy threshold: this quantile of holdout-to-train NN distances ..."
    )
    copy_margin: float = Field(0.5, gt=0.0, le=1.0, description="... times this factor")
    calibration_max: int = Field(
        2000,
        ge=20,
        description="aligned copy search: at most this many holdout images (a random subset) calibrate the threshold",
    )
    copy_match: Literal["aligned", "embedding"] = Field(
        "aligned",
        description="aligned: best shift/zoom/mirror alignment of pixels (catches cropped and shifted copies); embedding: the encoder's distance",
    )
    closeness_test: Literal["permutation", "upper_bound"] = Field(
        "permutation",
        description="permutation: refuse a closeness share above what random deals of the reference patients give "
        "(one-sided, at 1 - confidence); upper_bound: refuse when the share's bootstrap CI upper bound exceeds max_closeness_upper",
    )
    max_closeness_upper: float = Field(0.55, ge=0.0, le=1.0, description="closeness_test upper_bound's limit")
    max_mia_auc_upper: float = Field(0.6, ge=0.5, le=1.0)
    max_phi_findings: int = Field(0, ge=0)
    max_rare_ngram_leaks: int = Field(0, ge=0)
    rare_ngram_n: int = Field(8, ge=3)
    rare_ngram_k: int = Field(2, ge=1, description="an n-gram found in fewer than k training reports is rare")
    near_duplicate_jaccard: float = Field(
        0.9, gt=0.0, le=1.0, description="MinHash Jaccard similarity that makes two reports near-duplicates"
    )
    max_near_duplicate_excess: float = Field(
        0.05, ge=0.0, le=1.0, description="synthetic near-duplicate rate may exceed holdout's by this much"
    )
    text_encoder: Optional[Path] = Field(
        None, description="a local sentence-embedding model directory (transformers); none: that check is not run"
    )
    require_dp: bool = False
    epsilon_budget: Optional[float] = Field(None, gt=0.0)
    # Label fidelity (privacy/audit/fidelity.py): do the synthetic records carry their labels?
    min_label_fidelity_auroc: float = Field(
        0.6,
        ge=0.5,
        le=1.0,
        description="per-label and macro AUROC of a classifier trained on a site's real images, scoring the synthetic images against their labels",
    )
    min_report_label_agreement: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="per-label and macro positive F1 between the report labeler's reading of each synthetic report and its labels",
    )
    weak_labels: Literal["drop", "refuse"] = Field(
        "drop", description="labels below a floor: emptied in the released manifest (drop), or the release is refused"
    )
    min_fidelity_positives: int = Field(
        5,
        ge=2,
        description="a label is judged when the synthetic set has at least this many positives and as many negatives",
    )
    min_fidelity_real_positives: int = Field(
        10, ge=2, description="... and a site has this many real training positives to train its classifier on"
    )
    fidelity_steps: int = Field(300, ge=1, le=100_000, description="training steps of each site's fidelity classifier")
    bootstrap: int = Field(1000, ge=10)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    encoder: Literal["pixels", "selfsup", "file"] = "pixels"
    encoder_weights: Optional[Path] = Field(
        None, description="encoder 'file': TorchScript (.pt) or self-supervised encoder weights (.safetensors)"
    )
    pixel_grid: int = Field(16, ge=4, le=128, description="encoder 'pixels': side of the downsampled image")
    selfsup_steps: int = Field(300, ge=1)
    chunk: int = Field(4096, ge=16, description="nearest-neighbour search block size (bounds memory)")
    max_failed_audits: int = Field(
        0,
        ge=0,
        description="failed audits of the same model (in the steward's register) the gate tolerates: by default a model "
        "whose sample failed is not released by sampling it again",
    )
    skip: tuple[Literal[SAMPLE_CHECKS], ...] = Field(
        (), description="checks the steward deliberately leaves out; recorded in the audit and the dataset card"
    )
    seed: int = 0


class RunConfig(Strict):
    name: str = "run"
    # The config class of the family `model.family` names (cxrsynth.models.registry).
    model: SerializeAsAny[BaseModel]
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    dp: DPConfig = DPConfig()
    federation: FederationConfig = FederationConfig()
    audit: AuditPolicy = AuditPolicy()

    @field_validator("model", mode="before")
    @classmethod
    def _family_config(cls, value: Any) -> Any:
        if isinstance(value, dict) and "family" not in value:
            raise ValueError(f"the key 'family' is missing; expected one of {'|'.join(registry.names())}")
        if not isinstance(value, (dict, BaseModel)):
            raise ValueError(
                f"expected a mapping of model settings with a key 'family' ({'|'.join(registry.names())})"
            )
        name = value["family"] if isinstance(value, dict) else getattr(value, "family", type(value).__name__)
        try:
            family = registry.get(str(name))
        except registry.FamilyError as e:
            raise ValueError(str(e)) from None
        return value if isinstance(value, family.config) else family.config.model_validate(value)


def preset_files() -> dict[str, Path]:
    """Preset name (`<family>-<preset>`) -> YAML path, over every registered family."""
    return {name: path for family in registry.families().values() for name, path in family.preset_files().items()}


def preset_names() -> list[str]:
    return sorted(preset_files())


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: Path, missing: Optional[str] = None) -> dict:
    """A YAML mapping from `path`; ConfigError naming the file (and line) otherwise. `missing`:
    what to say after the path when there is no such file (default: the run-config hint)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        hint = missing or f"no such config file; give a YAML path or a preset ({', '.join(preset_names())})."
        raise ConfigError(f"{path}: {hint}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)}).") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}.")
    return data


def _resolve(source: str | Path, seen: tuple = ()) -> tuple[dict, str]:
    src = str(source)
    presets = preset_files()
    if src in presets and not Path(src).suffix:
        path = presets[src]
    else:
        path = Path(src)
        if not path.exists() and not path.suffix:
            raise ConfigError(f"{src}: neither a config file nor a preset; presets: {', '.join(preset_names())}.")
    data = read_yaml(path)
    parent = data.pop("preset", None)
    if parent is not None:
        if parent in seen:
            raise ConfigError(f"{path}: key 'preset': preset {parent!r} includes itself.")
        if parent not in preset_names():
            raise ConfigError(
                f"{path}: key 'preset': unknown preset {parent!r}; expected one of {', '.join(preset_names())}."
            )
        base, _ = _resolve(parent, seen + (parent,))
        data = _deep_merge(base, data)
    return data, str(path)


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: {err.error_count()} setting(s) not valid:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and the section it is in)"
        else:
            msg = e["msg"]
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  key '{key}': {msg}{shown}")
    return "\n".join(lines)


def load_config(source: str | Path, overrides: Optional[dict[str, Any]] = None) -> RunConfig:
    """Load a RunConfig from a YAML path or a preset name, with optional nested overrides."""
    data, where = _resolve(source)
    if overrides:
        data = _deep_merge(data, overrides)
    if "model" not in data:
        unknown = sorted(str(k) for k in data if k not in RunConfig.model_fields)
        also = (
            f"; unknown top-level key(s) {unknown} (check the spelling; the sections are {list(RunConfig.model_fields)})"
            if unknown
            else ""
        )
        raise ConfigError(
            f"{where}: key 'model' is missing; it needs at least `family: {'|'.join(registry.names())}` (or start from a preset: {', '.join(preset_names())}){also}."
        )
    return validate(RunConfig, data, where)


def validate(model: type[M], data: Any, where: str, error: type[InputError] = ConfigError, hint: str = "") -> M:
    """`model` validated from `data`; otherwise `error` (a ConfigError unless told) naming `where`
    and each bad key, then `hint` on a line of its own."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(format_validation_error(e, where) + (f"\n{hint}" if hint else "")) from None


def config_from_dict(data: dict, where: str = "<config>") -> RunConfig:
    return validate(RunConfig, data, where)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
