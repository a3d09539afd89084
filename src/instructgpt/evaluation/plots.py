"""Report figures as PNG bytes (matplotlib Agg canvas; no pyplot, no global backend change).

Every function takes plain data and returns the PNG file content, so the
report can both inline it (base64 data URI) and write it next to report.md.
Labels are drawn as plain text (mathtext off), so model names with ``$`` are safe.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from typing import TYPE_CHECKING

from .stats import Estimate

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_RC = {"text.parse_math": False, "font.size": 9, "axes.spines.top": False,
       "axes.spines.right": False}
DPI = 96


def size_label(n: int | None) -> str:
    """Parameter count as text: 125000000 -> '125M', None -> '?'."""
    if n is None:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _style():
    """The figures' matplotlib settings, as a context. matplotlib is imported here, on the first figure:
    every ``instructgpt`` command imports the report's module, and only eval draws (~1 s saved per start)."""
    import matplotlib as mpl
    return mpl.rc_context(_RC)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _ok(e: Estimate | None) -> bool:
    return e is not None and not math.isnan(e.value)


def _err(e: Estimate) -> tuple[float, float]:
    """Lower and upper error-bar lengths (0 where the interval is undefined)."""
    lo = 0.0 if math.isnan(e.low) else max(0.0, e.value - e.low)
    hi = 0.0 if math.isnan(e.high) else max(0.0, e.high - e.value)
    return lo, hi


def grouped_bars(categories: Sequence[str], series: dict[str, Sequence[Estimate | None]],
                 title: str, ylabel: str, hline: float | None = None,
                 ylim: tuple[float, float] | None = None, rotate: bool = False) -> bytes:
    """Bars with 95% error bars: one group per category, one bar per series.

    series: name -> one Estimate (or None = not measured, drawn as "n/m")
    per category, aligned with ``categories``.
    """
    with _style():
        n_cat, n_ser = len(categories), max(1, len(series))
        fig = _new_figure(max(4.5, 0.9 + n_cat * (0.35 + 0.22 * n_ser)), 3.2)
        ax = fig.add_subplot()
        width = 0.8 / n_ser
        for j, (name, ests) in enumerate(series.items()):
            xs = [i - 0.4 + width * (j + 0.5) for i in range(n_cat)]
            pts = [(x, e) for x, e in zip(xs, ests) if _ok(e)]
            if pts:
                errs = list(zip(*[_err(e) for _, e in pts]))
                ax.bar([x for x, _ in pts], [e.value for _, e in pts], width * 0.92,
                       yerr=errs, capsize=3, label=name)
            for x, e in zip(xs, ests):
                if not _ok(e):
                    ax.text(x, 0, "n/m", ha="center", va="bottom", fontsize=7, color="grey")
        if hline is not None:
            ax.axhline(hline, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(n_cat), list(categories), rotation=30 if rotate else 0,
                      ha="right" if rotate else "center")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if ylim:
            ax.set_ylim(*ylim)
        if len(series) > 1:
            ax.legend(fontsize=7, frameon=False)
        return _png(fig)


def by_size(lines: dict[str, Sequence[tuple[int, Estimate]]], title: str, ylabel: str,
            hline: float | None = None) -> bytes:
    """Metric against parameter count (log x), one line with error bars per model kind.

    lines: kind -> [(n_params, estimate), ...].
    """
    from matplotlib import ticker as mpl_ticker
    with _style():
        fig = _new_figure(5.0, 3.2)
        ax = fig.add_subplot()
        for kind, pts in lines.items():
            pts = sorted((p for p in pts if _ok(p[1])), key=lambda p: p[0])
            if pts:
                errs = list(zip(*[_err(e) for _, e in pts]))
                ax.errorbar([n for n, _ in pts], [e.value for _, e in pts], yerr=errs,
                            marker="o", capsize=3, label=kind)
        if hline is not None:
            ax.axhline(hline, color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        sizes = sorted({n for pts in lines.values() for n, _ in pts})
        ax.xaxis.set_minor_locator(mpl_ticker.NullLocator())
        ax.set_xticks(sizes, [size_label(n) for n in sizes])  # plain text, no mathtext
        ax.margins(x=0.15)
        ax.set_xlabel("parameters")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7, frameon=False)
        return _png(fig)


def frontier(runs: dict[str, Sequence[tuple[float, float, float]]]) -> bytes:
    """Reward against KL from the SFT policy over PPO iterations.

    runs: run name -> [(kl, reward, step), ...]; points are joined in step
    order and coloured by progress (light = early, dark = late).
    """
    with _style():
        fig = _new_figure(5.0, 3.4)
        ax = fig.add_subplot()
        for name, pts in runs.items():
            pts = sorted(pts, key=lambda p: p[2])
            kl, score = [p[0] for p in pts], [p[1] for p in pts]
            line, = ax.plot(kl, score, lw=0.8, alpha=0.6, label=name)
            ax.scatter(kl, score, c=range(len(pts)), cmap="viridis", s=10, zorder=3)
            ax.scatter(kl[-1:], score[-1:], marker="*", s=80, color=line.get_color(), zorder=4)
        ax.set_xlabel("KL(policy || SFT) per sample")
        ax.set_ylabel("reward-model score")
        ax.set_title("Reward vs KL over PPO iterations (star = last)")
        ax.legend(fontsize=7, frameon=False)
        return _png(fig)


def curves(metrics: dict[str, dict[str, tuple[list[float], list[float]]]], xlabel: str,
           max_panels: int = 12) -> bytes:
    """Training curves: one panel per metric, one line per run.

    metrics: metric name -> run name -> (steps, values), the steps in units of ``xlabel``; at most
    ``max_panels`` metrics are drawn (in the given order).
    """
    names = list(metrics)[:max_panels]
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    with _style():
        fig = _new_figure(3.2 * cols, 2.4 * rows)
        for i, metric in enumerate(names, start=1):
            ax = fig.add_subplot(rows, cols, i)
            for run, (steps, values) in metrics[metric].items():
                ax.plot(steps, values, lw=1, label=run)
            ax.set_title(metric, fontsize=8)
            ax.set_xlabel(xlabel, fontsize=7)
            ax.legend(fontsize=6, frameon=False)
        return _png(fig)
