"""Running a step that may not be built yet, and saying so instead of faking its output."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from cxrsynth.errors import CheckFailed

OK, NOT_BUILT, FAILED, SKIPPED, REFUSED = "ok", "not built yet", "failed", "skipped", "refused"


@dataclass
class StageResult:
    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    value: Any = None
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 2),
            "outputs": self.outputs,
        }


PROJECT_PACKAGES = ("cxrsynth",)


def not_built_reason(exc: BaseException) -> Optional[str]:
    """Why `exc` means a part of the project is not there (a project module that cannot be found),
    or None when it is a real error: a name missing from a module that is there is a bug, and is
    reported as a failure, never as "not built"."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in PROJECT_PACKAGES:
        return f"{exc.__class__.__name__}: {exc}"
    return None


def run_stage(name: str, fn: Callable[[], Any], say: Callable[[str], None] = print) -> StageResult:
    """Run `fn`; ImportError -> 'not built yet', CheckFailed -> 'refused', other errors -> 'failed'."""
    say(f"== {name}")
    t0 = time.perf_counter()
    try:
        value = fn()
        result = StageResult(name, OK, value=value)
    except CheckFailed as e:
        result = StageResult(name, REFUSED, str(e))
    except Exception as e:  # noqa: BLE001 - every stage failure is reported, the run goes on
        reason = not_built_reason(e)
        if reason is not None:
            result = StageResult(name, NOT_BUILT, reason)
        else:
            last = traceback.extract_tb(e.__traceback__)[-1]
            result = StageResult(name, FAILED, f"{e.__class__.__name__}: {e} ({last.filename}:{last.lineno})")
    result.seconds = time.perf_counter() - t0
    if result.status != OK:
        say(f"   {name}: {result.status.upper()} - {result.detail}")
    else:
        say(f"   {name}: done in {result.seconds:.1f}s")
    return result


def skipped(name: str, because: str, say: Callable[[str], None] = print) -> StageResult:
    say(f"== {name}\n   {name}: SKIPPED - {because}")
    return StageResult(name, SKIPPED, because)
