"""One seaborn theme for the book and the figures that recur across chapters."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

NORM_ORDER = ["batch", "group", "layer", "none"]
NORM_PALETTE = {"batch": "#c0392b", "group": "#2471a3", "layer": "#229954", "none": "#7f8c8d"}


def set_theme() -> None:
    """The book's plotting style (call once at the top of a chapter)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "axes.titleweight": "bold"})


def norm_order(present) -> list[str]:
    """The norms present, in the book's fixed order (batch first, none last)."""
    present = set(present)
    return [n for n in NORM_ORDER if n in present] + sorted(present - set(NORM_ORDER))


def training_curves(history: pd.DataFrame, metrics=("test_acc", "train_loss"), title: str = ""):
    """Per-epoch curves by norm, the band showing the spread (sd) across seeds."""
    order = norm_order(history["norm"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.6))
    for ax, metric in zip(axes, metrics):
        sns.lineplot(data=history, x="epoch", y=metric, hue="norm", hue_order=order,
                     palette=NORM_PALETTE, errorbar="sd", ax=ax)
        ax.set_ylabel(metric.replace("_", " "))
        if "loss" in metric:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
