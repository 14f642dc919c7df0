"""Progress on a terminal (rich bars with an ETA) and off one (plain lines), and the quiet log."""

import io
import logging
import os
import warnings

import pytest

from cxrsynth.progress import Progress, setup_logging


def test_plain_lines_with_eta_when_not_a_terminal():
    stream = io.StringIO()
    p = Progress(stream=stream)
    task = p.task("work", 4)
    task.advance(1, "first")
    task.advance(2)
    task.advance(1, "last")
    p.say("stage done")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[work] 1/4 (25%") and "eta" in lines[0] and lines[0].endswith("first")
    assert lines[-2].startswith("[work] 4/4 (100%") and "eta" not in lines[-2]
    assert lines[-1] == "stage done"
    quiet = io.StringIO()
    Progress(quiet=True, stream=quiet).task("work", 2).advance(2, "note")
    assert quiet.getvalue() == ""


def test_rich_bar_with_eta_on_a_terminal():
    master, slave = os.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        p = Progress(stream=tty)
        assert p.on_terminal
        task = p.task("training", 3)
        task.advance(1)
        p.say("a stage line")
        task.advance(2, "loss=0.5")
        tty.flush()
        assert p._rich is None  # every bar finished: the display stopped, the cursor is back
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    text = out.decode("utf-8", "replace")
    assert "training  loss=0.5" in text and "3/3" in text and "eta" in text and "a stage line" in text
    assert "\x1b[?25l" in text and text.rindex("\x1b[?25h") > text.rindex("3/3")  # cursor hidden, then shown


@pytest.fixture
def logging_restored():
    root, flwr = logging.getLogger(), logging.getLogger("flwr")
    saved = (root.level, list(root.handlers), flwr.propagate, list(flwr.filters))
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    flwr.propagate = saved[2]
    flwr.filters[:] = saved[3]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_flower_deprecation_notices_hidden_unless_verbose(logging_restored):
    from flwr.common.logger import log, warn_deprecated_feature

    seen = _Collect()  # beside Flower's own console handler: what the flwr logger lets through
    logging.getLogger("flwr").addHandler(seen)
    try:
        setup_logging(verbose=False)
        warn_deprecated_feature("an old call")
        log(logging.INFO, "configure_train: Sampled 3 nodes")
        log(logging.WARNING, "a real warning")
        assert not any("an old call" in m or "Sampled" in m for m in seen.lines) and "a real warning" in seen.lines
        setup_logging(verbose=True)
        warn_deprecated_feature("an old call")
        log(logging.INFO, "configure_train: Sampled 3 nodes")
        assert any("an old call" in m for m in seen.lines) and "configure_train: Sampled 3 nodes" in seen.lines
    finally:
        logging.getLogger("flwr").removeHandler(seen)


def test_ray_future_default_notice_hidden_unless_verbose(logging_restored):
    for verbose, shown in ((False, 0), (True, 1)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("default")
            setup_logging(verbose=verbose)
            warnings.warn_explicit("future default", FutureWarning, "worker.py", 1, module="ray._private.worker")
            warnings.warn_explicit("ours", FutureWarning, "model.py", 1, module="cxrsynth.models.base")
        assert [str(w.message) for w in seen] == ["future default"] * shown + ["ours"]
