"""Figures for run reports and studies: plain functions in, matplotlib `Figure` out (Agg, no display).

Every function builds its own `Figure` object (never pyplot's global state), so they are safe to call
from a training process, a worker thread or a test. Turn one into bytes with `figure_to_png` or into
an `<img>`-ready string with `figure_to_base64`.
"""
from __future__ import annotations

import base64
import functools
import io
import math
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np

# Figure objects render through Agg on savefig without pyplot, so importing this module leaves the
# caller's backend alone (a notebook keeps its inline backend).
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter


def _plain_text(plot):
    """Run names and class names are data, not TeX: a '$' in them must not start mathtext."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)
    return wrapper


CURVE_PANELS = (("loss", "train_loss", "val_loss"), ("accuracy", "train_accuracy", "val_accuracy"), ("learning rate", "lr", None))


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure_to_base64(fig: Figure, dpi: int = 100) -> str:
    """The PNG as base64 text, for `<img src="data:image/png;base64,...">`."""
    return base64.b64encode(figure_to_png(fig, dpi)).decode("ascii")


@_plain_text
def plot_curves(histories: Mapping[str, Sequence[dict]], best_epochs: Mapping[str, int] | None = None,
                panels=CURVE_PANELS) -> Figure:
    """Loss, accuracy and learning rate per epoch; one colour per run, train dashed, validation solid.

    `histories` maps a run label to its metrics rows (dicts with `epoch` and the panel columns, as in
    metrics.csv); `best_epochs` marks each run's selected epoch with a dot on its validation curve.
    The gap between the dashed and the solid line is the over-fitting.
    """
    fig = Figure(figsize=(5.2 * len(panels), 3.6))
    fig.subplots_adjust(wspace=0.25)  # no tight_layout: savefig's tight bbox trims the margins, at half the cost
    axes = fig.subplots(1, len(panels))
    colors = matplotlib.colormaps["tab10"].colors
    for i, (label, rows) in enumerate(histories.items()):
        color = colors[i % len(colors)]
        epochs = [r["epoch"] for r in rows]
        best = (best_epochs or {}).get(label)
        for ax, (_title, train_key, val_key) in zip(axes, panels):
            if train_key:
                ax.plot(epochs, [r[train_key] for r in rows], color=color, ls="--" if val_key else "-",
                        label=f"{label} train" if val_key else label)
            if val_key:
                vals = [r[val_key] for r in rows]
                sparse = sum(v == v for v in vals) < len(vals)  # train.val_every: NaN gaps; markers keep lone points
                ax.plot(epochs, vals, color=color, ls="-", marker="." if sparse else None, label=f"{label} val")
                if best in epochs:
                    j = epochs.index(best)
                    ax.plot([best], [vals[j]], "o", color=color, ms=7, mfc="white", mew=2)
                    ax.axvline(best, color=color, lw=0.8, alpha=0.4)
    for ax, (title, _, _) in zip(axes, panels):
        if title == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    if best_epochs:
        axes[1].text(0.99, 0.02, "o = best epoch (by validation accuracy)", transform=axes[1].transAxes,
                     ha="right", va="bottom", fontsize=8, color="0.3")
    return fig


def use_log_scale(values: Sequence[float], log_range: bool = False) -> bool:
    """The one rule for a numeric x axis: logarithmic when every value is positive and either they
    were drawn on a log scale (`log_range`: a log-uniform range, the LR range test's exponential
    steps) or they span a decade or more (learning rates, batch sizes 16 to 256); linear otherwise."""
    xs = [float(v) for v in values]
    if not xs or min(xs) <= 0:
        return False
    return log_range or max(xs) / min(xs) >= 10


def set_log_x(ax) -> None:
    """A logarithmic x axis labelled in plain numbers (0.001, 1e-05, 10): matplotlib's default log labels
    are mathtext ($10^{-3}$), which the plots here turn off so that a '$' in a name stays a '$'."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


@_plain_text
def plot_metric_vs_param(param_values: Sequence, metric_values: Sequence[float], param: str,
                         metric: str = "val_accuracy", errors: Sequence[float] | None = None,
                         log_x: bool | None = None, *, log_range: bool = False, connect: bool = False,
                         tick_label: Callable[[Any], str] = str, title: str = "") -> Figure:
    """A metric against one hyperparameter (a sweep's trials, or repeats' means with `errors` bars).

    Numbers go on a numeric axis, sorted, logarithmic by `use_log_scale` unless `log_x` says
    otherwise, and joined by a line when `connect` (the points form one curve); anything else
    (optimizer names, on/off) goes on a categorical axis, each value named by `tick_label`.
    """
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in param_values)
    ys, yerr = list(metric_values), None if errors is None else list(errors)
    if numeric:
        order = sorted(range(len(param_values)), key=lambda i: param_values[i])
        xs = [float(param_values[i]) for i in order]
        ys = [ys[i] for i in order]
        yerr = None if yerr is None else [yerr[i] for i in order]
        if log_x is None:
            log_x = use_log_scale(xs, log_range)
    else:
        labels = sorted({tick_label(v) for v in param_values})
        xs = [labels.index(tick_label(v)) for v in param_values]
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        connect = False  # categories have no order to follow
    fmt = "o-" if connect else "o"
    if yerr is not None:
        ax.errorbar(xs, ys, yerr=yerr, fmt=fmt, capsize=3)
    else:
        ax.plot(xs, ys, fmt, alpha=0.8)
    if numeric and log_x:
        set_log_x(ax)
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return fig


@_plain_text
def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestions: Mapping[str, float],
                 title: str = "") -> Figure:
    """The LR range test: smoothed loss against the learning rate, each suggested LR marked on the curve."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.plot(lrs, losses)
    for (name, lr), colour in zip(suggestions.items(), ("C1", "C2", "C3")):
        i = min(range(len(lrs)), key=lambda k: abs(math.log(lrs[k] / lr)))
        shown = "minimum/10" if name == "minimum" else name  # fastai's name for the lowest loss's LR / 10
        ax.plot([lr], [losses[i]], "o", color=colour, label=f"{shown} {lr:.1e}")
    if use_log_scale(lrs, log_range=True):  # the LR grows exponentially, step by step
        set_log_x(ax)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@_plain_text
def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> Figure:
    """Confusion heatmap, rows = true class, columns = predicted; row-normalised colours, counts written in."""
    m = np.asarray(matrix, dtype=float)
    k = len(classes)
    rates = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = min(max(4.0, 0.42 * k + 1.8), 12)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 40:  # beyond that the labels only overlap
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return fig


@_plain_text
def plot_image_grid(images: np.ndarray, titles: Sequence[str] | None = None, cols: int = 8,
                    cell: float = 1.3) -> Figure:
    """A grid of images (N, H, W, 3) or (N, H, W) with values in [0, 1], `cell` inches each, titles above.

    The grid is one composed picture on one axes: dozens of subplots would cost seconds to lay out.
    """
    images = np.clip(np.asarray(images, dtype=np.float64), 0, 1)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    n, h, w = images.shape[:3]
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    gap = max(1, w // 8)
    band = math.ceil(0.4 * w / cell) if titles else 0  # room for two lines of small text, in pixels
    canvas = np.ones((rows * (h + band + gap) + gap, cols * (w + gap) + gap, 3))
    fig = Figure(figsize=(canvas.shape[1] * cell / w, canvas.shape[0] * cell / w))
    ax = fig.add_axes((0, 0, 1, 1))
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (h + band + gap) + band, gap + c * (w + gap)
        canvas[y:y + h, x:x + w] = images[i]
        if titles:
            ax.text(x + w / 2, y - 0.5, titles[i], ha="center", va="bottom", fontsize=8, linespacing=1.1)
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    return fig


def filters_as_images(weight: np.ndarray, image_shape: tuple[int, int, int] | None = None,
                      limit: int = 64) -> np.ndarray:
    """First-layer weights as displayable images, each scaled to [0, 1] on its own.

    A conv weight (out, in, kh, kw) gives one kh x kw image per filter (RGB when in == 3, else
    the channel mean); a linear weight (out, C*H*W) on flattened pixels gives one C x H x W image
    per unit, as in the classic MLP weight pictures.
    """
    w = np.asarray(weight, dtype=np.float64)[:limit]
    if w.ndim == 2:
        w = w.reshape(len(w), *image_shape)
    w = w.transpose(0, 2, 3, 1) if w.shape[1] == 3 else w.mean(1)
    lo = w.reshape(len(w), -1).min(1).reshape(-1, *[1] * (w.ndim - 1))
    hi = w.reshape(len(w), -1).max(1).reshape(-1, *[1] * (w.ndim - 1))
    return (w - lo) / np.maximum(hi - lo, 1e-12)
