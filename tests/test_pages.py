"""Every page is drawn by a template of the one jinja2 environment, with autoescape on."""

from __future__ import annotations

import re
from pathlib import Path

from cxrsynth import pages

ROOT = Path(__file__).resolve().parent.parent


def test_text_from_data_is_escaped_and_the_stylesheet_is_shared(tmp_path):
    path = pages.write(
        tmp_path / "p.html",
        "gallery.html",
        title="<b>x</b>",
        header=["a"],
        rows=[["<script>alert(1)</script>"]],
        grids=[("r&d", "")],
    )
    html = path.read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html and "r&amp;d" in html
    assert ".pair>div" in html and "<p><em>no images</em></p>" in html  # the stylesheet is included verbatim


def test_no_python_module_writes_html_of_its_own():
    offenders = []
    for path in [
        *ROOT.glob("cxrsynth/**/*.py"),
        *ROOT.glob("privacy/**/*.py"),
        *ROOT.glob("server/**/*.py"),
        *ROOT.glob("client/**/*.py"),
    ]:
        text = path.read_text(encoding="utf-8")
        if re.search(r"<(!doctype|html|table|h[1-3]|img)\b", text, re.I):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"HTML built in Python instead of a template: {offenders}"


def test_numbers_read_the_same_on_every_page():
    assert pages.fmt(0.12345) == "0.123" and pages.fmt(None) == "n/a" and pages.fmt(3) == "3"
    # A small non-zero figure (the ledger's delta) keeps its value instead of reading 0.000.
    assert pages.fmt(1e-5) == "1e-05" and pages.fmt(0.0) == "0.000" and pages.fmt(0.0004) == "0.0004"
    assert pages.sig(0.000123456) == "0.0001235" and pages.sig([0.1, 0.25]) == "[0.100, 0.250]"


def test_demo_round_plot_draws_losses_only():
    from cxrsynth.eval.demo_page import _round_plot

    counts_only = [{"round": r, "metrics": {"local-seconds": 13.0 * r, "privacy-units": 133.3}} for r in (1, 2)]
    assert _round_plot(counts_only) == ""
    with_loss = [{"round": r, "metrics": {"local-seconds": 13.0, "loss-loss": 0.2 / r}} for r in (1, 2)]
    assert _round_plot(with_loss).startswith("data:image/png;base64,")
