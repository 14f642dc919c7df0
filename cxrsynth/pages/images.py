"""Images and figures as PNG data URIs, so that every page is one self-contained file."""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np
from PIL import Image


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


def grid_uri(images: Sequence[np.ndarray], cols: int = 8, cell: int = 96) -> str:
    """The images tiled into one PNG data URI; empty when there are none (the page says so)."""
    images = [im for im in images if im is not None]
    return png_uri(grid_png(images, cols, cell)) if images else ""


def figure_uri(fig, dpi: int = 100) -> str:
    """A `matplotlib.figure.Figure` as a PNG data URI. Figures are built without pyplot, so no
    backend is chosen and nothing global is left open."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return png_uri(buf.getvalue())
