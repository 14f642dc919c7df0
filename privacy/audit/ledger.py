"""The DP ledger of a checkpoint: per-site epsilon and delta, from train_state.json.

Two forms are written (privacy/dp.py, server/loop.py): a single-site entry `{"epsilon",
"delta", ...}` from `cxrsynth train`, and a federated book `{"sites": {site: {"epsilon",
"delta", ...}}, "delta", "epsilon"}`. Anything else is reported as unreadable, never guessed at.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from cxrsynth.config import AuditPolicy


def _entry(name: str, e: Any, default_delta: Optional[float]) -> tuple[Optional[dict], Optional[str]]:
    if not isinstance(e, dict):
        return None, f"site {name}: entry is {type(e).__name__}, expected a mapping"
    eps, delta = e.get("epsilon"), e.get("delta", default_delta)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or math.isnan(eps):
        return None, f"site {name}: no numeric 'epsilon' (keys: {sorted(e)})"
    if not isinstance(delta, (int, float)):
        return None, f"site {name}: no numeric 'delta' (keys: {sorted(e)})"
    return {"site": name, "epsilon": float(eps), "delta": float(delta), "steps": e.get("steps")}, None


def read_ledger(train_state: Optional[dict]) -> tuple[list[dict], list[str]]:
    """(per-site entries, problems). No ledger at all is one problem, stated as such."""
    if not train_state or train_state.get("privacy_ledger") in (None, {}):
        return [], [
            "the checkpoint's train_state.json has no 'privacy_ledger' (trained without DP, or not by cxrsynth)"
        ]
    book = train_state["privacy_ledger"]
    if not isinstance(book, dict):
        return [], [f"'privacy_ledger' is {type(book).__name__}, expected a mapping"]
    if "sites" in book:
        sites = book["sites"]
        if not isinstance(sites, dict) or not sites:
            return [], ["'privacy_ledger.sites' is empty or not a mapping"]
        out, problems = [], []
        for name, e in sites.items():
            entry, problem = _entry(str(name), e, book.get("delta"))
            if entry:
                out.append(entry)
            if problem:
                problems.append(problem)
        return out, problems
    entry, problem = _entry("local", book, None)
    return ([entry] if entry else []), ([problem] if problem else [])


def dp_ledger_check(train_state: Optional[dict], policy: AuditPolicy) -> dict:
    from cxrsynth.privacy.audit.verdict import dp_ledger

    entries, problems = read_ledger(train_state)
    worst = max((e["epsilon"] for e in entries), default=None)
    # Without require_dp the ledger is reported, and only a stated budget can fail it.
    check = {
        "status": "ran",
        "sites": entries,
        "epsilon_max": worst,
        "require_dp": policy.require_dp,
        "epsilon_budget": policy.epsilon_budget,
        "problems": problems,
    }
    base = (train_state or {}).get("base")
    if isinstance(base, dict):
        # The pretrained base the sites fine-tuned (cxrsynth.pretrained): what it saw, and its cost.
        check["base"] = {k: base.get(k) for k in ("pretrained_on", "sha256", "records", "steps", "privacy_cost")}
    looks = (train_state or {}).get("site_looks")
    if isinstance(looks, dict):
        # The sites' looks the release is rendered in (cxrsynth.models.acquisition): each site's
        # release is in its ledger above; how it was made is said on the dataset card.
        check["site_looks"] = {"sites": len(looks.get("weights", [])), "note": looks.get("note", "")}
    reasons = dp_ledger(check, policy)
    return {"passed": not reasons, **check, "reasons": reasons}
