"""Self-contained HTML pages: images and matplotlib plots embedded as PNG data URIs."""

from __future__ import annotations

import base64
import html
import io
from typing import Optional, Sequence

import numpy as np
from PIL import Image

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}.ok{color:#070}.bad{color:#b00}.warn{color:#a60}img{image-rendering:pixelated}
.pair{display:flex;gap:1.5em;flex-wrap:wrap}.pair>div{flex:1;min-width:300px}pre{white-space:pre-wrap;background:#f8f8f8;padding:.5em}
"""


def esc(x) -> str:
    return html.escape(str(x))


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def grid_png(images: Sequence[np.ndarray], cols: int = 8, cell: int = 96, pad: int = 2) -> bytes:
    """Grayscale images tiled into one PNG, each resized to `cell` pixels."""
    rows = max(1, -(-len(images) // cols))
    canvas = Image.new("L", (cols * (cell + pad) + pad, rows * (cell + pad) + pad), 255)
    for i, arr in enumerate(images):
        im = Image.fromarray(np.asarray(arr, dtype=np.uint8), mode="L").resize((cell, cell), Image.NEAREST)
        canvas.paste(im, (pad + (i % cols) * (cell + pad), pad + (i // cols) * (cell + pad)))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def grid_img(images: Sequence[np.ndarray], cols: int = 8, cell: int = 96, alt: str = "") -> str:
    if not images:
        return "<p><em>no images</em></p>"
    return f'<img alt="{esc(alt)}" src="{png_uri(grid_png(images, cols, cell))}">'


def figure_img(fig, alt: str = "") -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{esc(alt)}" src="{png_uri(buf.getvalue())}">'


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(header: Sequence[str], rows: Sequence[Sequence], classes: Optional[Sequence[str]] = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def page(title: str, parts: Sequence[str]) -> str:
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{''.join(parts)}</body></html>"
