"""Figures a reader can read: budgets on the axis as budgets, chance where a rate has one."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bnprivacy import plots  # noqa: E402


def tick_labels(ax):
    ax.figure.canvas.draw()
    return [label.get_text() for label in ax.get_xticklabels()]


def test_a_budget_axis_is_labelled_with_the_budgets_not_powers_of_two():
    fig, ax = plt.subplots()
    ax.plot([10, 20, 40], [1, 2, 3])
    plots.budget_axis(ax, [40, 10, 20, 20])
    assert list(ax.get_xticks()) == [10, 20, 40]
    assert tick_labels(ax) == ["10", "20", "40"]
    assert not ax.xaxis.get_minorticklocs().size
    plt.close(fig)


def test_protocol_curves_label_their_budgets():
    curve = pd.DataFrame([{"norm": n, "budget": b, "mean": 0.5, "lo": 0.4, "hi": 0.6, "test_acc": 0.5 + b / 100}
                          for n in ("batch", "none") for b in (15, 40)])
    fig = plots.protocol_curves(curve, "AUC")
    assert tick_labels(fig.axes[0]) == ["15", "40"]
    plt.close(fig)


@pytest.mark.parametrize("metric, level", [("auc", 0.5), ("tpr@0.01", 0.01), ("tpr@0.001", 0.001)])
def test_the_chance_line_sits_at_what_no_signal_reads(metric, level):
    fig, ax = plt.subplots()
    plots.chance_line(ax, metric)
    (line,) = ax.get_lines()
    assert list(line.get_ydata()) == [level, level]
    plt.close(fig)
