"""One seaborn theme for the book and the figures that recur across chapters."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import NullLocator

from .config import norm_order
from .attacks import ATTACK_NAMES, roc

NORM_PALETTE = {"batch": "#c0392b", "group": "#2471a3", "layer": "#229954", "gn_ws": "#8e44ad", "nf": "#d68910",
                "none": "#7f8c8d"}


def literal(text) -> str:
    """``text`` as matplotlib draws it literally: every ``$`` escaped as ``\\$``, so text from a
    file or a caller is never parsed as mathtext (which draws ``$x$`` as a formula and stops the
    figure on ``$\\foo{$``); matplotlib draws ``\\$`` as ``$``. Every label of recorded or
    caller text goes through it."""
    return str(text).replace("$", r"\$")


def set_theme() -> None:
    """The book's plotting style (call once at the top of a chapter)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "axes.titleweight": "bold"})


def training_curves(history: pd.DataFrame, metrics=("test_acc", "train_loss"), title: str = ""):
    """Per-epoch curves by norm, the band showing the spread (sd) across seeds."""
    order = norm_order(history["norm"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.6))
    for ax, metric in zip(axes, metrics):
        sns.lineplot(data=history, x="epoch", y=metric, hue="norm", hue_order=order,
                     palette=NORM_PALETTE, errorbar="sd", ax=ax)
        ax.set_ylabel(literal(metric.replace("_", " ")))
        if "loss" in metric:
            ax.set_yscale("log")
    if title:
        fig.suptitle(literal(title))
    fig.tight_layout()
    return fig


def budget_axis(ax, budgets) -> None:
    """An x axis of epoch budgets: log scale (budgets grow geometrically), ticked and labelled at
    the budgets themselves (10, 20, 40), not at powers of two."""
    budgets = sorted({int(b) for b in budgets})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("epoch budget (complete schedule)")


# What a measure reads with no signal: an AUC of 0.5, a TPR equal to its FPR.
CHANCE = {"auc": 0.5, "tpr@0.01": 0.01, "tpr@0.001": 0.001}


def chance_line(ax, metric: str) -> None:
    """A dashed grey line at the chance level of ``metric`` (a key of :data:`CHANCE`)."""
    ax.axhline(CHANCE[metric], color="0.5", lw=0.8, ls="--", zorder=0)


def protocol_curves(curve: pd.DataFrame, ylabel: str, comparisons=None, null: tuple[float, float] | None = None):
    """A measure against epoch budget (left) and against test accuracy (right), per norm, with the
    95% interval over seeds; markers ring the budgets the comparisons use. ``null`` = (mean, sd)
    of the measure on shuffled masks draws a grey band at mean ± 2 sd (what no signal reads)."""
    order = norm_order(curve["norm"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    if null is not None and all(map(np.isfinite, null)):
        for ax in axes:
            ax.axhspan(null[0] - 2 * null[1], null[0] + 2 * null[1], color="0.85", zorder=0,
                       label="null ± 2 sd" if ax is axes[0] else None)
            ax.axhline(null[0], color="0.6", lw=0.8, ls="--", zorder=0)
    for norm in order:
        part = curve[curve.norm == norm].sort_values("budget")
        for ax, x in zip(axes, ("budget", "test_acc")):
            ax.errorbar(part[x], part["mean"], yerr=[part["mean"] - part["lo"], part["hi"] - part["mean"]],
                        color=NORM_PALETTE.get(norm), marker="o", capsize=3, label=literal(norm))
    for c in comparisons or []:
        if "matched fit" not in c.settings:
            continue
        for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref)):
            point = curve[(curve.norm == norm) & (curve.budget == budget)]
            axes[0].scatter(point.budget, point["mean"], s=160, facecolors="none", edgecolors="black",
                            label="matched fit" if norm == "batch" else None)
    if np.isfinite(curve["mean"].to_numpy(dtype=float)).any():
        budget_axis(axes[0], curve["budget"].unique())
    else:  # e.g. a TPR that no run's pooled non-members can resolve: say so instead of an empty plot
        for ax in axes:
            ax.text(0.5, 0.5, "not resolvable at this pool size", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_xlabel("epoch budget (complete schedule)")
    axes[1].set_xlabel("test accuracy")
    axes[0].set_ylabel(literal(ylabel))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def image_grid(data, indices, titles, ncols: int = 10, size: float = 1.1):
    """Pool images ``indices`` of ``data`` (denormalised) in a grid with a title each."""
    import numpy as np

    rows = int(np.ceil(len(indices) / ncols)) or 1
    fig, axes = plt.subplots(rows, ncols, figsize=(ncols * size, rows * (size + 0.35)), squeeze=False)
    pictures = data.denormalise(data.x_train[list(indices)].cpu())
    for ax in axes.flat:
        ax.axis("off")
    for ax, picture, title in zip(axes.flat, pictures, titles):
        ax.imshow(picture.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if picture.shape[0] == 1 else None)
        ax.set_title(literal(title), fontsize=7)
    fig.tight_layout()
    return fig


def memorization_boxes(scores: pd.DataFrame, kinds: list[str], title: str = ""):
    """Memorization score by kind of sample and norm (each box pools the samples of all seeds)."""
    order = norm_order(scores["norm"].unique())
    fig, ax = plt.subplots(figsize=(9, 3.8))
    sns.boxplot(data=scores, x="kind", y="mem", hue="norm", order=kinds, hue_order=order, palette=NORM_PALETTE,
                fliersize=1.5, linewidth=0.8, ax=ax)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("memorization score")
    ax.set_xlabel("")
    ax.set_title(literal(title))
    ax.legend(title="norm", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def roc_panels(attacked, attacks, title: str = ""):
    """Log-log ROC curves of ``attacks`` (one panel each) for every norm of an
    ``analysis.membership.Attacked``; the dashed diagonal is a guessing attacker."""
    fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.7), sharey=True, squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for norm, run in attacked.runs.items():
            fpr, tpr = roc(attacked.scores[norm, attack].numpy(), run.masks[attacked.targets].numpy())
            ax.plot(fpr, tpr, color=NORM_PALETTE.get(norm), label=literal(norm), lw=1.3)
        ax.plot([1e-4, 1], [1e-4, 1], ls="--", color="gray", lw=0.8)
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), title=literal(ATTACK_NAMES[attack]),
               xlabel="false-positive rate")
    axes[0][0].set_ylabel("true-positive rate")
    axes[0][-1].legend(title="norm", fontsize=8)
    if title:
        fig.suptitle(literal(title))
    fig.tight_layout()
    return fig


SETTING_COLORS = {"equal epochs": "#c0392b", "equal epochs, both fit": "#e67e22", "matched fit": "#2471a3",
                  "matched accuracy, interpolated": "#1abc9c", "matched accuracy": "#1abc9c",
                  "matched training loss, interpolated": "#16a085",
                  "mitigation": "#8e44ad", "simulation": "#7f8c8d"}


def setting_color(setting: str) -> str:
    """The forest plot's colour of a setting; a merged one ("a = b") takes its fairest part's."""
    parts = setting.split(" = ")
    return SETTING_COLORS.get(parts[-1], SETTING_COLORS.get(parts[0], "black"))


def frontier(per_measure: dict[str, pd.DataFrame], title: str = ""):
    """The utility frontier: each measure (one panel, its own scale) against test accuracy, one
    line per norm through its budgets in order of accuracy, with the 95% interval over seeds as a
    band (``protocol.measures.curves`` tables, e.g. ``analysis.verdict.frontier_curves``)."""
    measures = list(per_measure)
    if not measures:  # e.g. a verdict over chapters 05-06 only: say so in the figure's place
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no chapter of 2-4 recorded curve values here", ha="center", va="center")
        return fig
    ncols = min(3, len(measures))
    nrows = -(-len(measures) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax, measure in zip(axes.flat, measures):
        curve = per_measure[measure]
        for norm in norm_order(curve["norm"].unique()):
            part = curve[curve.norm == norm].sort_values("test_acc")
            color = NORM_PALETTE.get(norm)
            ax.plot(part["test_acc"], part["mean"], marker="o", color=color, label=literal(norm), lw=1.3)
            ax.fill_between(part["test_acc"], part["lo"], part["hi"], color=color, alpha=0.2, lw=0)
        ax.set_title(literal(measure), fontsize=9, loc="left")
        ax.set_xlabel("test accuracy", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    axes[0, 0].legend(title="norm", fontsize=8)
    if title:
        fig.suptitle(literal(title))
    fig.tight_layout()
    return fig


def forest(rows: pd.DataFrame):
    """One small panel per measure, each on its own x scale: BN − reference with its 95% interval
    per setting (``analysis.verdict.forest_rows``). Hollow grey points are not comparable."""
    import numpy as np

    panels = list(dict.fromkeys(rows["panel"]))
    heights = [max(1, (rows.panel == p).sum()) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 0.42 * sum(heights) + 0.75 * len(panels)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        part = rows[rows.panel == panel].reset_index(drop=True)
        for y, row in part.iterrows():
            color = setting_color(row.setting) if row.comparable else "#bbbbbb"
            if np.isfinite(row.lo) and np.isfinite(row.hi):
                ax.plot([row.lo, row.hi], [y, y], color=color, lw=2)
            ax.plot(row["diff"], y, "o", color=color, mfc=color if row.comparable else "white")
        ax.axvline(0, color="black", lw=0.8)
        labels = [literal(f"{label}{'' if comparable else ' (not comparable)'}")
                  for label, comparable in zip(part.label, part.comparable)]
        ax.set_yticks(range(len(part)), labels, fontsize=8)
        ax.set_ylim(len(part) - 0.5, -0.5)
        ax.set_title(literal(panel), fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=8)
    axes[-1, 0].set_xlabel("BN − reference, with 95% interval (each panel on its own scale)")
    fig.tight_layout()
    return fig
