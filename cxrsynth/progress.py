"""Progress for long work: rich progress bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Optional


class _Task:
    def __init__(self, owner: "Progress", label: str, total: int):
        self.owner, self.label, self.total = owner, label, total
        self.count = 0
        self.t0 = time.perf_counter()
        self._last_print = 0.0

    def advance(self, n: int = 1, note: Optional[str] = None) -> None:
        self.count += n
        now = time.perf_counter()
        if self.owner.quiet:
            return
        if note is not None or now - self._last_print > 5 or self.count == self.total:
            self._last_print = now
            pct = 100 * self.count / max(self.total, 1)
            extra = f"  {note}" if note else ""
            print(f"[{self.label}] {self.count}/{self.total} ({pct:.0f}%, {now - self.t0:.1f}s){extra}", file=self.owner.stream, flush=True)

    def done(self) -> None:
        pass


class Progress:
    """Minimal progress reporter: `task(label, total).advance()`, and `say(text)` for stage lines."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr

    def task(self, label: str, total: int) -> _Task:
        return _Task(self, label, total)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)
