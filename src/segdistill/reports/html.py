"""HTML pieces of a report page: pure functions of their inputs (tables, cards, figures, image
panels), one inline stylesheet, no script, no network. A page is a list of :class:`Section`; the
run and evaluation pages (``reports/pages.py``) put them together."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from ..version import __version__

PANEL_SIDE = 256
"""Longest side of an image panel, in pixels (larger images are shrunk; the page stays small)."""

# Prediction panels: correct foreground, false positives, missed foreground.
_TP, _FP, _FN = (0.10, 0.80, 0.25), (1.00, 0.20, 0.10), (0.15, 0.45, 1.00)


@dataclass
class Section:
    """One part of the page: an anchor, a heading, and its HTML."""

    id: str
    title: str
    body: str


@dataclass
class Case:
    """One image shown: its title and its panels (caption, RGB uint8 image)."""

    title: str
    panels: list[tuple[str, np.ndarray]] = field(default_factory=list)


_CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1d232a;background:#f4f5f7;-webkit-text-size-adjust:100%}
main{max-width:1100px;margin:0 auto;padding:16px}
header h1{font-size:1.5em;margin:.2em 0;overflow-wrap:anywhere}
header p{margin:0;color:#59636e;font-size:.9em;overflow-wrap:anywhere}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;margin:10px 0;font-size:.95em}
nav a{color:#0b5cad;text-decoration:none}
section{background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:12px 16px;margin:14px 0}
h2{font-size:1.2em;margin:.1em 0 .5em}
h3{font-size:1em;margin:1em 0 .3em;overflow-wrap:anywhere}
p{margin:.4em 0}
code{font-size:.9em;background:#eef0f3;padding:0 3px;border-radius:3px;overflow-wrap:anywhere}
img{width:100%;height:auto;display:block}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.95em}
th,td{padding:4px 10px;border-bottom:1px solid #e4e7eb;text-align:left;white-space:nowrap;vertical-align:top}
th{background:#f0f2f5}
td.num{text-align:right}
table.card{width:100%}
table.card td{white-space:normal;overflow-wrap:anywhere}
table.card td:first-child{white-space:nowrap;color:#59636e}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:12px}
figure{margin:0}
figcaption{font-size:.85em;color:#59636e;margin-top:2px}
.bars{max-height:26em;overflow-y:auto;border:1px solid #e4e7eb;border-radius:6px;padding:6px}
.bar{display:grid;grid-template-columns:minmax(4em,11em) 1fr 3.6em;gap:8px;align-items:center;font-size:.9em}
.bar .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar .track{background:#eef0f3;border-radius:3px;height:.9em}
.bar .fill{display:block;height:100%;border-radius:3px}
.bar .val{text-align:right;font-variant-numeric:tabular-nums}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px}
.panels img{image-rendering:pixelated;border-radius:4px}
.legend span{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:-.1em;margin:0 4px 0 10px}
details{margin:.6em 0}
summary{cursor:pointer;color:#0b5cad}
pre{overflow-x:auto;font-size:.8em;background:#f6f7f9;padding:8px;border-radius:6px;margin:.4em 0}
.missing{color:#8a5a00}
@media (max-width:600px){main{padding:6px}section{padding:8px 10px;margin:10px 0}header h1{font-size:1.25em}
 th,td{padding:3px 6px}table{font-size:.9em}
 .panels{grid-template-columns:repeat(2,minmax(0,1fr))}.bar{grid-template-columns:minmax(3em,7em) 1fr 3.2em}}
"""


_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole document: inline CSS, a navigation line, the sections."""
    written = datetime.now().astimezone().isoformat(timespec="seconds")
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            # Self-contained by rule, not only by intent: the browser refuses anything from outside.
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
            f"<body><main><header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"
            f"<p>written {written} by segdistill {__version__}</p></header>"
            f"<nav>{nav}</nav>\n{body}\n</main></body></html>\n")


def table(rows: list[dict[str, Any]]) -> str:
    """An HTML table of ``rows`` (columns of the first row), numbers right-aligned; it scrolls
    sideways on a narrow screen."""
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in cols) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return f"<td>{'' if v is None else v}</td>"
    if isinstance(v, float):
        text = "-" if not math.isfinite(v) else (f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}")
        return f'<td class="num">{text}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v:,}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def card(rows: list[tuple[str, str]]) -> str:
    """Key-value rows (the model card)."""
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<div class="scroll"><table class="card"><tbody>{body}</tbody></table></div>'


def details(summary: str, text: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"


def figures(figs: list[Any], captions: list[str]) -> str:
    """Matplotlib figures as embedded PNGs (closed afterwards), side by side where there is room."""
    import matplotlib.pyplot as plt

    out = []
    for fig, caption in zip(figs, captions):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150)
        plt.close(fig)
        out.append(f'<figure>{_img(buf.getvalue(), caption)}<figcaption>{html.escape(caption)}</figcaption></figure>')
    return f'<div class="figs">{"".join(out)}</div>'


def bars(rows: list[dict[str, Any]]) -> str:
    """Per-image IoU as horizontal bars, in the order given, with a one-line summary above."""
    values = [float(r["iou"]) for r in rows]
    summary = (f"<p>{len(values)} images, worst first: mean {np.mean(values):.3f}, median {np.median(values):.3f}, "
               f"min {min(values):.3f}, max {max(values):.3f}.</p>")
    lines = []
    for r, v in zip(rows, values):
        colour = f"hsl({round(120 * max(0.0, min(v, 1.0)))},55%,45%)"
        name = html.escape(str(r["image"]))
        lines.append(f'<div class="bar"><span class="name" title="{name}">{name}</span><span class="track">'
                     f'<span class="fill" style="width:{100 * max(0.0, min(v, 1.0)):.1f}%;background:{colour}"></span>'
                     f'</span><span class="val">{v:.3f}</span></div>')
    return summary + f'<div class="bars">{"".join(lines)}</div>'


def cases_html(cases: list[Case] | str) -> str:
    if isinstance(cases, str):
        return f'<p class="missing">{html.escape(cases)}</p>'
    legend = ('<p class="legend">Predictions:'
              + "".join(f'<span style="background:{_css(c)}"></span>{name}' for c, name in
                        ((_TP, "correct foreground"), (_FP, "false positive"), (_FN, "missed"))) + "</p>")
    out = [legend]
    for case in cases:
        panels = "".join(f"<figure>{_img(_png(a), cap)}<figcaption>{html.escape(cap)}</figcaption></figure>"
                         for cap, a in case.panels)
        out.append(f'<h3>{html.escape(case.title)}</h3><div class="panels">{panels}</div>')
    return "".join(out)


def missing(name: str, why: str) -> str:
    return f'<p class="missing">Not shown: this run folder has no {html.escape(name)} ({html.escape(why)}).</p>'


def tint(image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], alpha: float = 0.5) -> np.ndarray:
    """RGB uint8: ``image`` (H, W, C) float in [0, 1] with ``mask`` (H, W) tinted ``colour``."""
    rgb = _rgb_float(image)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return _shrink((rgb * 255).round().astype(np.uint8))


def reference_panel(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8: the reference mask (ground truth, or the teacher's) tinted as correct foreground."""
    return tint(image, mask, _TP)


def error_overlay(image: np.ndarray, pred: np.ndarray, ref: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8: correct foreground, false positives and missed foreground in three colours."""
    rgb = _rgb_float(image)
    for where, colour in ((pred & ref, _TP), (pred & ~ref, _FP), (~pred & ref, _FN)):
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour, dtype=np.float32)
    return _shrink((rgb * 255).round().astype(np.uint8))


def _rgb_float(image: np.ndarray) -> np.ndarray:
    return (np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]).astype(np.float32, copy=True)


def rgb(image: np.ndarray) -> np.ndarray:
    return _shrink((_rgb_float(image) * 255).round().astype(np.uint8))


def _shrink(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(h, w) <= PANEL_SIDE:
        return rgb
    scale = PANEL_SIDE / max(h, w)
    im = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return np.asarray(im)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _css(colour: tuple[float, float, float]) -> str:
    return "rgb({},{},{})".format(*(round(255 * c) for c in colour))
