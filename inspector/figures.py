"""PNG figures of an evaluation and a training run: confusion matrix, reliability, history.
Headless Agg canvas on standalone Figures: no pyplot, no global backend switch, lazy import."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from inspector.errors import ConfigurationError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_confusion_matrix", "plot_history", "plot_reliability"]

_DPI = 120


def _figure(width: float, height: float) -> Figure:
    """A new Figure drawn by an Agg canvas (independent of the pyplot backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, format="png", dpi=_DPI)
    finally:
        fig.clear()
    return out


def plot_confusion_matrix(
    confusion: ArrayLike, classes: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """Confusion matrix (rows true, columns predicted): counts written in each cell, colour by
    the row-normalised fraction (recall of each true class along the diagonal)."""
    counts = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if counts.shape != (k, k):
        raise ConfigurationError(f"confusion must have shape ({k}, {k}), got {counts.shape}")
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(
        counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums > 0
    )

    side = max(4.5, 0.55 * k + 3.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of true class")

    font = max(6.0, min(11.0, 80.0 / max(k, 1)))
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(int(counts[i, j])),
                ha="center",
                va="center",
                fontsize=font,
                color="white" if normalised[i, j] > 0.55 else "black",
            )
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(list(classes), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(counts.sum())
    accuracy = float(np.trace(counts)) / total if total else 0.0
    ax.set_title(f"Confusion matrix ({total} images, accuracy {accuracy:.3f})")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(
    bins: Sequence[Mapping[str, Any]], ece: float, path: str | os.PathLike[str]
) -> Path:
    """Reliability diagram from ``evaluation.reliability_bins``: accuracy per confidence bin
    against the diagonal (gap to perfect calibration shaded), image counts per bin below."""
    fig = _figure(6.0, 6.5)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    ax_count = fig.add_subplot(grid[1], sharex=ax)

    lowers = np.array([float(b["lower"]) for b in bins], dtype=np.float64)
    uppers = np.array([float(b["upper"]) for b in bins], dtype=np.float64)
    counts = np.array([int(b["count"]) for b in bins], dtype=np.int64)
    centres, widths = (lowers + uppers) / 2.0, uppers - lowers
    filled = counts > 0
    accuracy = np.array([float(b["accuracy"]) if b["count"] else 0.0 for b in bins])
    confidence = np.array([float(b["confidence"]) if b["count"] else 0.0 for b in bins])

    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", label="perfect calibration")
    ax.bar(
        centres[filled],
        accuracy[filled],
        width=widths[filled],
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    ax.bar(
        centres[filled],
        confidence[filled] - accuracy[filled],
        bottom=accuracy[filled],
        width=widths[filled],
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        linewidth=0.6,
        label="gap to mean confidence",
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE = {ece:.4f}, {int(counts.sum())} images)")
    ax.legend(loc="upper left", fontsize=9)
    ax.tick_params(labelbottom=False)

    ax_count.bar(centres, counts, width=widths, color="tab:grey", edgecolor="black", linewidth=0.6)
    ax_count.set_xlabel("top-1 confidence")
    ax_count.set_ylabel("images")
    if counts.any() and counts.max() / max(counts[filled].min(), 1) > 100:
        ax_count.set_yscale("log")
    fig.subplots_adjust(left=0.13, right=0.96, top=0.94, bottom=0.09)
    return _save(fig, path)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    in_turn = _networks_in_turn(history)
    for i, row in enumerate(history):
        value = row.get(key)
        if value is None:
            continue
        y = float(value)
        if not math.isfinite(y):
            continue
        epoch = row.get("epoch")
        if in_turn and xs and row.get("member") != history[i - 1].get("member"):
            xs.append(i + 0.5)  # no line from one network's last epoch to the next's first
            ys.append(math.nan)
        # A set's networks trained one after another: their epochs follow on along the axis.
        xs.append(float(epoch) if epoch is not None and not in_turn else float(i + 1))
        ys.append(y)
    return xs, ys


def _networks_in_turn(history: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``history`` holds the epochs of several networks trained in turn (a set)."""
    return len({row.get("member") for row in history} - {None}) > 1


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")


def plot_history(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Training curves: train/val loss on the left; val accuracy and macro-F1 on the right with
    the learning rate on a log-scale twin axis. Missing keys or values are skipped."""
    fig = _figure(11.0, 4.5)
    ax_loss, ax_metric = fig.subplots(1, 2, sharex=True)

    plotted = False
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        xs, ys = _series(history, key)
        if xs:
            ax_loss.plot(xs, ys, marker="o", markersize=3, label=label)
            plotted = True
    if plotted:
        ax_loss.legend()
    else:
        _no_data(ax_loss)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Loss")
    ax_loss.grid(alpha=0.3)

    handles = []
    for key, label in (("val_accuracy", "val accuracy"), ("val_macro_f1", "val macro-F1")):
        xs, ys = _series(history, key)
        if xs:
            handles += ax_metric.plot(xs, ys, marker="o", markersize=3, label=label)
    xs, ys = _series(history, "lr")
    if xs:
        ax_lr = ax_metric.twinx()
        handles += ax_lr.plot(xs, ys, color="tab:grey", linestyle=":", label="learning rate")
        if all(y > 0 for y in ys if not math.isnan(y)):
            ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate")
    if handles:
        # below the panel: the metric and learning-rate curves span the whole plot area
        ax_metric.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            ncol=len(handles),
            frameon=False,
        )
    else:
        _no_data(ax_metric)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("metric")
    ax_metric.set_title("Validation metrics")
    ax_metric.grid(alpha=0.3)

    from matplotlib.ticker import MaxNLocator

    title = f"Training history ({len(history)} epochs)"
    if _networks_in_turn(history):
        # Dashed lines where the next network of the set starts training.
        starts = [
            i + 1
            for i in range(1, len(history))
            if history[i].get("member") != history[i - 1].get("member")
        ]
        for ax in (ax_loss, ax_metric):
            for x in starts:
                ax.axvline(x - 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xlabel("epoch, networks of the set in turn")
        title = f"Training history ({len(starts) + 1} networks, {len(history)} epochs)"
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
