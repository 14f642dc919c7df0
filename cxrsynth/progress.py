"""Progress for long work: rich progress bars with an ETA on a terminal, plain lines otherwise.

`Progress.task(label, total).advance(n, note)` counts work done; `say(text)` writes a stage line.
Output goes to stderr (results go to stdout); `quiet` silences both. Warnings are not progress:
they go through `logging` (`setup_logging`).
"""

from __future__ import annotations

import atexit
import logging
import sys
import time
import warnings
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

PLAIN_EVERY_S = 5.0  # a plain line at most this often, besides notes and the last step
BAR_EVERY_S = 0.1  # bars redrawn at most this often


class _Task:
    def __init__(self, owner: "Progress", label: str, total: int):
        self.owner, self.label, self.total = owner, label, total
        self.count = 0
        self.t0 = time.perf_counter()
        self._last_print = 0.0
        self._bar = owner._bars().add_task(label, total=total) if owner.on_terminal else None

    def advance(self, n: int = 1, note: Optional[str] = None) -> None:
        self.count += n
        if self.owner.quiet:
            return
        if self._bar is not None:
            bars = self.owner._bars()
            bars.update(self._bar, advance=n, description=f"{self.label}  {note}" if note else None)
            if self.count >= self.total:
                self.done()
            elif time.perf_counter() - self.owner._drawn > BAR_EVERY_S:
                bars.refresh()
                self.owner._drawn = time.perf_counter()
            return
        now = time.perf_counter()
        if note is not None or now - self._last_print > PLAIN_EVERY_S or self.count == self.total:
            self._last_print = now
            elapsed = now - self.t0
            pct = 100 * self.count / max(self.total, 1)
            eta = (
                f", eta {elapsed / self.count * (self.total - self.count):.1f}s" if 0 < self.count < self.total else ""
            )
            extra = f"  {note}" if note else ""
            print(
                f"[{self.label}] {self.count}/{self.total} ({pct:.0f}%, {elapsed:.1f}s{eta}){extra}",
                file=self.owner.stream,
                flush=True,
            )

    def done(self) -> None:
        """The work ended (possibly short of `total`): its bar stops counting."""
        if self._bar is not None:
            self.owner._finish(self._bar)
            self._bar = None


class Progress:
    """Progress reporter: `task(label, total).advance()`, and `say(text)` for stage lines."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.on_terminal = not quiet and bool(getattr(self.stream, "isatty", lambda: False)())
        self._rich: Optional[RichProgress] = None
        self._drawn = 0.0

    def task(self, label: str, total: int) -> _Task:
        return _Task(self, label, total)

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def _bars(self) -> RichProgress:
        if self._rich is None:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
            )
            # Refreshed on each advance (no refresh thread); stdout stays the results' own.
            self._rich = RichProgress(
                *columns, console=Console(file=self.stream), auto_refresh=False, redirect_stdout=False
            )
            self._rich.start()
            atexit.register(self._stop)
        return self._rich

    def _finish(self, bar) -> None:
        if self._rich is None:
            return
        self._rich.stop_task(bar)
        self._rich.refresh()
        if all(t.finished or t.stop_time is not None for t in self._rich.tasks):
            self._stop()

    def _stop(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


# Third-party notices that say nothing about this run: Flower's deprecation notices and its
# per-round INFO lines (our own progress says the same), and Ray's notice about a future default.
_NOISY_LOGGERS = ("flwr",)
_NOISY_WARNINGS = (
    (FutureWarning, r"ray\b"),
    (DeprecationWarning, r"(ray|flwr)\b"),
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or (
            record.levelno >= logging.WARNING and "DEPRECATED" not in record.getMessage()
        )


def setup_logging(verbose: bool = False) -> None:
    """Warnings (and with `verbose` info and debug lines) to stderr; without `verbose`, third-party
    noise filtered out. Called once by the command line."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _CurrentStderrHandler)), None)
    if handler is None:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False  # it has a console handler of its own
        for f in [f for f in logger.filters if isinstance(f, _DropNoise)]:
            logger.removeFilter(f)
        if not verbose:
            logger.addFilter(_DropNoise())
    if not verbose:
        for category, module in _NOISY_WARNINGS:
            warnings.filterwarnings("ignore", category=category, module=module)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to the stderr of the moment a line is logged, so that a live progress display, which
    takes stderr over, prints the line above its bars."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass
