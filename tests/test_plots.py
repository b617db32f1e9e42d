"""Figures a reader can read: budgets on the axis as budgets, chance where a rate has one."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.cbook  # noqa: E402
import matplotlib.text  # noqa: E402

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


# Recorded or caller text with dollar signs: one that mathtext cannot parse (it stopped chapter 07
# with ParseFatalException), a folder name with an undefined macro, and valid mathtext.
DOLLAR_TEXTS = (r"$\foo{$", r"a$\undefinedmacro$b", "$x$", r"price \$5")


def drawn_texts(fig) -> list:
    """Every Text object of a figure after it is drawn (draw() fails if any label is bad mathtext)."""
    fig.canvas.draw()
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def assert_drawn_as_written(fig, texts):
    """Each text of ``texts`` is on the figure, escaped, and matplotlib draws it as written, not as math."""
    drawn = {t.get_text(): t for t in drawn_texts(fig)}
    for text in texts:
        shown = [t for escaped, t in drawn.items() if text in escaped.replace(r"\$", "$")]
        assert shown, f"{text!r} is not on the figure"
        for t in shown:
            # _preprocess_math is what Text.draw renders: the string it draws and whether as mathtext.
            assert t._preprocess_math(t.get_text())[1] is False
            assert text in t._preprocess_math(t.get_text())[0]
    plt.close(fig)


def test_literal_text_is_never_read_as_mathtext():
    for text in DOLLAR_TEXTS:
        escaped = plots.literal(text)
        assert not matplotlib.cbook.is_math_text(escaped)
        assert matplotlib.text.Text(text=escaped)._preprocess_math(escaped) == (text, False)


def _curve(norms):
    return pd.DataFrame([{"norm": n, "budget": b, "mean": 0.5, "lo": 0.4, "hi": 0.6, "test_acc": 0.5 + b / 100}
                         for n in norms for b in (10, 20)])


@pytest.mark.parametrize("text", DOLLAR_TEXTS)
def test_the_frontier_draws_recorded_measures_norms_and_names_as_written(text):
    fig = plots.frontier({text: _curve(["batch", text])}, title=f"{text}: the utility frontier")
    assert_drawn_as_written(fig, [text, f"{text}: the utility frontier"])


@pytest.mark.parametrize("text", DOLLAR_TEXTS)
def test_the_forest_draws_recorded_panels_and_labels_as_written(text):
    rows = pd.DataFrame({"panel": [f"02 {text}"] * 2, "label": [f"matched fit vs {text}", "equal epochs"],
                         "setting": ["matched fit", "equal epochs"], "diff": [0.1, 0.2], "lo": [0.0, 0.1],
                         "hi": [0.2, 0.3], "comparable": [True, False]})
    assert_drawn_as_written(plots.forest(rows), [f"02 {text}", f"matched fit vs {text}"])


@pytest.mark.parametrize("text", DOLLAR_TEXTS)
def test_protocol_curves_draw_their_labels_as_written(text):
    fig = plots.protocol_curves(_curve(["batch", text]), f"AUC {text}")
    assert_drawn_as_written(fig, [text, f"AUC {text}"])
