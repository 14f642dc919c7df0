"""HTML pages: one jinja2 environment (autoescape on), one stylesheet, templates in templates/.

Python builds the data a page shows; its template draws it. Images and figures are embedded as
PNG data URIs (`cxrsynth.pages.images`), so a page is one self-contained file.

    from cxrsynth import pages

    pages.write(path, "evaluation.html", title="cxrsynth evaluation", ...)

A template outside this package (a model family's own page) is given as a path; it may extend
`base.html` and import `macros.html` like the templates here.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import jinja2

from cxrsynth.pages.images import figure_uri, grid_uri, png_uri

__all__ = ["environment", "figure_uri", "fmt", "grid_uri", "png_uri", "render", "sig", "write"]


def fmt(value: Any, digits: int = 3) -> str:
    """How a number reads on a page: floats to `digits` places, none as 'n/a'."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        # A small non-zero figure (delta 1e-5, a rate of 3e-4) must not read as 0.000.
        if value != 0 and abs(value) < 0.5 * 10**-digits:
            return f"{value:.{digits - 2}g}"
        return f"{value:.{digits}f}"
    return str(value)


def sig(value: Any, digits: int = 4) -> str:
    """Significant digits for figures of very different sizes (thresholds, rates, distances)."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(x, float) for x in value):
        return "[" + ", ".join(f"{x:.3f}" for x in value) + "]"
    return fmt(value)


def template_dirs() -> list[Path]:
    """Where the templates are: beside this module, or, for code run from a Flower app bundle
    (which admits no .html or .css file), in another copy of cxrsynth: one on the import path, or
    the installed distribution (its package folder, or the source folder of an editable install)."""
    here = Path(__file__).with_name("templates")
    if here.is_dir():
        return [here]
    found = [Path(entry or ".") / "cxrsynth" / "pages" / "templates" for entry in sys.path if isinstance(entry, str)]
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("cxrsynth")
        found.append(Path(str(dist.locate_file("cxrsynth/pages/templates"))))
        origin = json.loads(dist.read_text("direct_url.json") or "{}")
        if origin.get("dir_info", {}).get("editable") and origin.get("url", "").startswith("file://"):
            found.append(Path(unquote(urlparse(origin["url"]).path)) / "cxrsynth" / "pages" / "templates")
    except PackageNotFoundError:
        pass
    return [d for d in dict.fromkeys(found) if d.is_dir()][:1]


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    dirs = template_dirs()
    if not dirs:
        raise FileNotFoundError(
            "cxrsynth's page templates (cxrsynth/pages/templates) are not installed; reinstall cxrsynth."
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html",), disabled_extensions=("css",), default_for_string=True, default=True
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = env.globals["fmt"] = fmt
    env.filters["sig"] = env.globals["sig"] = sig
    return env


def render(template: str | Path, **data: Any) -> str:
    env = environment()
    if isinstance(template, Path):
        return env.from_string(template.read_text(encoding="utf-8")).render(**data)
    return env.get_template(template).render(**data)


def write(path: str | Path, template: str | Path, **data: Any) -> Path:
    """`template` rendered with `data` into the file `path`."""
    path = Path(path)
    path.write_text(render(template, **data), encoding="utf-8")
    return path
