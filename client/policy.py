"""A hospital's own privacy floor, which no run config from the server can lower.

The run config arrives from the coordinator, and whoever controls the coordinator (or starts a
run there) writes it. So a site reads its floor from its own disk: the YAML named by the node
config key `site-policy`, else `site-policy.yaml` inside the dataset directory (`data-path`),
else the defaults below. A hospital node (`data-path`) defaults to the strict policy; a
simulated site of `cxrsynth fl simulate` (`partition-id`, the coordinator's own machine and data)
defaults to following the run config, unless it is given a `site-policy` too.

`enforce(cfg, policy)` returns the run config the site actually trains with: thresholds that
only make the site send less (the token and label-count k) are raised to the policy's; a run
asking for weaker DP than the policy allows (no DP, less noise, a larger delta or epsilon
budget, or none) is refused with a `SiteRefused` whose reason names the settings, never data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cxrsynth.config import RunConfig, read_yaml
from cxrsynth.errors import ConfigError, SiteRefused

POLICY_FILE = "site-policy.yaml"


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    require_dp: bool = Field(True, description="refuse a training round without DP-SGD")
    min_noise_multiplier: float = Field(0.8, ge=0.0, description="refuse a run whose dp.noise_multiplier is lower")
    max_epsilon: Optional[float] = Field(
        10.0, gt=0.0, description="the site's own budget; refuse a run with a larger dp.epsilon_budget or none"
    )
    max_delta: float = Field(1e-5, gt=0.0, lt=1.0, description="refuse a run with a larger dp.delta")
    min_count: int = Field(
        10,
        ge=1,
        description="token and label counts leave only when at least this many patients share them (raises federation.vocab_min_count)",
    )
    send_loss_metrics: bool = Field(
        False,
        description="training losses are computed on real batches outside the DP accounting; by default they stay here",
    )
    answer_audit_queries: bool = True
    audit_query_budget: int = Field(
        5, ge=0, description="audit queries this site answers over its lifetime (each is a look at its data)"
    )
    require_signed_audit_sets: bool = Field(
        True, description="answer only a synthetic set the coordinator pinned with a key in `trusted-entities`"
    )
    require_secure_aggregation: bool = Field(
        False, description="send a training update only masked in a SecAgg+ round, never in the clear"
    )


# What a simulated site follows when it has no policy of its own: the run config as sent.
PERMISSIVE = SitePolicy(
    require_dp=False,
    min_noise_multiplier=0.0,
    max_epsilon=None,
    max_delta=0.999999,
    min_count=1,
    send_loss_metrics=True,
    audit_query_budget=1_000_000,
    require_signed_audit_sets=False,
)


def load_policy(node_config: dict) -> SitePolicy:
    if "site-policy" in node_config:
        path: Optional[Path] = Path(str(node_config["site-policy"]))
    elif "data-path" in node_config:
        path = Path(str(node_config["data-path"])) / POLICY_FILE
        if not path.is_file():
            return SitePolicy()
    else:
        return PERMISSIVE
    data = read_yaml(
        path,
        missing="no such site policy file (node config key 'site-policy'); keys: "
        + ", ".join(SitePolicy.model_fields),
    )
    try:
        return SitePolicy.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{path}: key {'.'.join(str(x) for x in err['loc'])!r}: {err['msg']}.") from None


def enforce(cfg: RunConfig, policy: SitePolicy, *, training: bool = True) -> RunConfig:
    """The run config with the site's floor applied; SiteRefused when the run asks for weaker DP."""
    if training:
        dp = cfg.dp
        if policy.require_dp and not dp.enabled:
            raise SiteRefused("site policy requires DP-SGD (require_dp) and the run has dp.enabled false.")
        if dp.enabled:
            if dp.noise_multiplier < policy.min_noise_multiplier:
                raise SiteRefused(
                    f"site policy requires dp.noise_multiplier >= {policy.min_noise_multiplier:g}; the run asks for {dp.noise_multiplier:g}."
                )
            if dp.delta > policy.max_delta:
                raise SiteRefused(
                    f"site policy allows dp.delta <= {policy.max_delta:g}; the run asks for {dp.delta:g}."
                )
            if policy.max_epsilon is not None and (
                dp.epsilon_budget is None or dp.epsilon_budget > policy.max_epsilon
            ):
                asked = "no budget" if dp.epsilon_budget is None else f"{dp.epsilon_budget:g}"
                raise SiteRefused(
                    f"site policy allows dp.epsilon_budget <= {policy.max_epsilon:g}; the run asks for {asked}."
                )
    k = max(cfg.federation.vocab_min_count, policy.min_count)
    if k == cfg.federation.vocab_min_count:
        return cfg
    return cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"vocab_min_count": k})})


def enforce_look(cfg: RunConfig, policy: SitePolicy) -> None:
    """SiteRefused when the run asks for the site's look (federation.acquisition) below the site's DP floor."""
    if policy.require_dp and not cfg.dp.enabled:
        raise SiteRefused("site policy requires DP (require_dp); the run asks for the site's look without it.")
    if cfg.dp.enabled and cfg.federation.acquisition_noise < policy.min_noise_multiplier:
        raise SiteRefused(
            f"site policy requires noise multipliers >= {policy.min_noise_multiplier:g}; the run asks for federation.acquisition_noise {cfg.federation.acquisition_noise:g}."
        )


def refuse_plain_updates(policy: SitePolicy, *, secure: bool) -> None:
    """SiteRefused when the site sends updates only into a secure sum and this round is plain."""
    if policy.require_secure_aggregation and not secure:
        raise SiteRefused(
            "site policy sends its update only masked (require_secure_aggregation) and the run has federation.secure_aggregation off."
        )
