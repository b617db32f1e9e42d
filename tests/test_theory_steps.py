"""The steps of chapter 5 (analysis/theory_steps.py) at smoke size: the slopes and limits the
proposition predicts, and the readings of constructed intervals."""

import math
import types

import numpy as np
import pandas as pd
import pytest
import torch

from bnprivacy.analysis import theory_steps as steps
from bnprivacy.models import build_model
from bnprivacy.reading import NO_CLEAR, NO_INTERVAL

SETTING = steps.LinearSetting(features=6, classes=3, per_class=12, batch=8, lr=0.1, pretrain_epochs=3)
FAR = np.logspace(0, 6, 4)  # the last two points lie far beyond every unit's crossover distance


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as the chapter runs: these tensors are tiny, and a second thread only adds the
    thread pool's overhead (much of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def linear_sweep():
    return steps.sweep_linear(SETTING, [0, 1], FAR)


@pytest.fixture(scope="module")
def linear_reading(linear_sweep):
    return steps.read_linear_sweep(linear_sweep)


# --- intervals and readings --------------------------------------------------------------------


def test_end_slope_is_the_exponent_of_a_power_law_at_its_far_end():
    x = np.array([1.0, 10.0, 100.0])
    assert steps.end_slope(x, 3 * x ** 2) == pytest.approx(2.0)
    assert steps.end_slope(x, np.array([5.0, 1.0, 1.0])) == pytest.approx(0.0)


def test_an_interval_over_seeds_is_the_student_t_interval():
    interval = steps.Interval.over([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 dof) * sd / sqrt(n), sd = 1
    assert (interval.mean, interval.lo, interval.hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert interval.bounds() == f"[{2 - half:.2f}, {2 + half:.2f}]"
    assert interval.text(digits=1) == f"2.0 [{2 - half:.1f}, {2 + half:.1f}]"


@pytest.mark.parametrize("lo, hi, word", [(-0.1, 0.2, steps.BOUNDED), (0.9, 1.1, steps.GROWING),
                                          (0.2, 0.8, steps.UNCLEAR), (float("nan"), float("nan"), NO_INTERVAL)])
def test_a_slope_interval_reads_as_bounded_growing_or_unclear(lo, hi, word):
    assert steps.slope_reading(steps.Interval((lo + hi) / 2, lo, hi)) == word


def test_canary_ratios_differ_only_when_their_intervals_do_not_overlap():
    low, high, wide = ({"lo": 1.0, "hi": 2.0}, {"lo": 3.0, "hi": 4.0}, {"lo": 1.5, "hi": 3.5})
    assert steps.compare_ratios(high, low) == "larger with BN"
    assert steps.compare_ratios(low, high) == "smaller with BN"
    assert steps.compare_ratios(wide, low) == NO_CLEAR


def test_parameters_the_mixture_cannot_serve_are_refused():
    with pytest.raises(ValueError, match="classes \\* per_class = 36"):
        steps.check_parameters(SETTING, [2, 64], seeds=3)
    with pytest.raises(ValueError, match="between 2"):
        steps.check_parameters(SETTING, [1, 8], seeds=3)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        steps.check_parameters(SETTING, [2, 8], seeds=1)
    steps.check_parameters(SETTING, [2, 8, 36], seeds=2)
    with pytest.raises(ValueError, match="seeds='3' is not allowed"):
        steps.check_parameters(SETTING, [2, 8], seeds="3")


def test_the_small_networks_norms_are_a_list_with_batch_and_a_reference():
    assert steps.check_norms(["none", "batch", "group"]) == ["batch", "group", "none"]
    for bad in ("batch", [], ["batch", "banana"], ["none", "group"]):
        with pytest.raises(ValueError, match="with 'batch' and at least one reference, e.g. '\\[batch, none\\]'"):
            steps.check_norms(bad)


# --- the linear model --------------------------------------------------------------------------


def test_the_closed_forms_match_autograd_and_leave_one_out_needs_three_samples():
    check = steps.check_closed_forms(SETTING, [2, 3, 8], [0])
    assert len(check.cases) == 3 and check.worst < 1e-10
    assert list(check.by_batch.index) == [2, 3, 8]
    assert np.isnan(check.by_batch.loc[2, "loo"]) and check.by_batch.loc[3, "loo"] < 1e-10


def test_far_out_bn_bounds_the_outlier_and_without_bn_it_grows_like_its_distance(linear_reading):
    slopes = {key: interval.mean for key, interval in linear_reading.slopes.items()}
    assert slopes == pytest.approx({"own": 0.0, "loo": 0.0, "eval": 1.0, "none": 1.0}, abs=1e-3)
    assert linear_reading.readings == {"own": steps.BOUNDED, "loo": steps.BOUNDED,
                                       "eval": steps.GROWING, "none": steps.GROWING}


def test_the_linear_sweep_reaches_the_predicted_limits(linear_sweep, linear_reading):
    assert linear_reading.gap < 1e-8  # closed forms = autograd over the whole sweep
    assert linear_reading.own_to_limit < 1e-6 and linear_reading.loo_to_limit < 1e-2
    assert linear_reading.weight_ratio_far < 1e-2  # the weight part follows C / d^2
    assert linear_reading.crossover_max_lo <= linear_reading.crossover_max_hi
    assert all(linear_reading.peak_over_limit[k] >= 1 - 1e-6 for k in ("own", "loo"))  # a peak is never below the limit
    assert set(linear_sweep.rows["curve"]) == {"BN own", "BN loo", "BN eval", "no BN"}
    assert list(linear_sweep.limits["seed"]) == [0, 1]


def test_the_far_outlier_normalises_to_the_cap_sqrt_batch_minus_one():
    rows = steps.sweep_batch_sizes(SETTING, [2, 4, 16], [0], FAR)
    reading = steps.read_batch_sizes(rows)
    assert reading.yhat_gap < 1e-6 and reading.own_limit_gap < 1e-6
    assert list(reading.spread["B"]) == [4, 16]  # B = 2 has no spread: no crossover distance
    assert len(rows["curve"].iloc[0]) == len(FAR)


def test_the_crossover_exponent_is_fitted_per_seed():
    b = np.array([4, 8, 16, 32])
    rows = pd.DataFrame([{"B": bb, "seed": s, "crossover": (1 + s) * math.sqrt(bb) * (1 + 0.01 * s * i),
                          "yhat_ratio": 1.0, "own_measured": 1.0, "own_limit": 1.0}
                         for s in range(3) for i, bb in enumerate(b)])
    exponent = steps.read_batch_sizes(rows).crossover_exponent
    assert exponent.lo < 0.5 < exponent.hi and exponent.mean == pytest.approx(0.5, abs=0.02)


# --- the memorization simulation ---------------------------------------------------------------


def simulated(far_factor):
    """A constructed simulation: BN needs the same steps near the data, ``far_factor`` times more far out."""
    rows = []
    for seed in range(4):
        for d, factor in ((1.0, 1.0), (100.0, far_factor)):
            steps_none = 10.0 * (1 + seed)
            for norm, value in (("batch", steps_none * factor * (1 + 0.1 * (seed % 2))), ("none", steps_none)):
                rows.append({"B": 8, "norm": norm, "distance": d, "seed": seed, "steps": value,
                             "acc_before": 0.9, "acc_after": 0.8 if norm == "batch" else 0.6})
    sim = pd.DataFrame(rows)
    sim["cap"], sim["fitted"] = 1000, True
    sim["steps_or_cap"] = sim["steps"]
    return sim


def test_the_simulation_reads_slower_only_where_bn_needs_clearly_more_steps():
    reading = steps.read_simulation(simulated(far_factor=4.0))
    far = reading.ratios.set_index("distance").loc[100.0]
    assert far["ratio"] == pytest.approx(4 * 1.1 ** 0.5) and far["reading"] == steps.SLOWER
    assert reading.ratios.set_index("distance").loc[1.0, "reading"] == NO_CLEAR
    assert reading.slower_far and "B = 8, d = 100: BN needs" in reading.verdict
    assert (reading.unfit, reading.runs, reading.far_distance) == (0, 16, 100.0)
    assert reading.acc_far == pytest.approx({"batch": 0.8, "none": 0.6})
    assert not steps.read_simulation(simulated(far_factor=0.25)).slower_far


def test_the_headline_is_the_log2_steps_difference_at_the_farthest_distance():
    (row,) = steps.memorization_headlines(simulated(far_factor=4.0))
    assert row["setting"] == "simulation" and "100 typical distances out (B = 8)" in row["measure"]
    assert row["diff"] == pytest.approx(2 + 0.5 * math.log2(1.1)) and row["lo"] > 0


def test_the_simulation_step_marks_runs_that_hit_the_cap():
    sim = steps.simulate_memorization(SETTING, [1, 100], [0, 1], [8], max_epochs=5)
    assert len(sim) == 2 * 2 * 2  # norms x distances x seeds
    assert (sim["cap"] == 5 * ((SETTING.pool + 1) // 8)).all()
    assert (sim["fitted"] == sim["steps"].notna()).all()
    assert (sim.loc[~sim["fitted"], "steps_or_cap"] == sim.loc[~sim["fitted"], "cap"]).all()


# --- the small network and the canaries --------------------------------------------------------


@pytest.fixture(scope="module")
def network_case():
    """Untrained MLPs (BN and none) on 40 random 6x6 images, six of them canaries far from the rest."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 6, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    x[34:37] *= 3
    x[37:] += 4
    data = types.SimpleNamespace(x_train=x, y_train=y, kinds=["typical"] * 34 + ["noise"] * 3 + ["ood"] * 3,
                                 input_shape=(1, 6, 6), num_classes=3)
    models = {}
    for norm in ("batch", "none"):
        torch.manual_seed(0)
        models[norm] = build_model("mlp", norm, 8, data.input_shape, data.num_classes)
    return data, models


@pytest.fixture(scope="module")
def network_sweep(network_case):
    data, models = network_case
    return steps.sweep_network(models, data, [0, 1, 2], 8, [1, 1e3, 1e4, 1e5], "cpu")


def test_in_a_network_bn_bounds_the_far_outlier_and_eval_mode_does_not(network_sweep):
    reading = steps.read_network_sweep(network_sweep, "mlp")
    assert reading.readings == {"batch own": steps.BOUNDED, "batch loo": steps.BOUNDED,
                                "batch eval": steps.GROWING, "none": steps.GROWING}
    assert list(reading.table["predicted slope"]) == ["0", "0", "1", "1"]
    assert "its eval-mode gradient **growing about linearly**" in reading.verdict
    assert reading.has_pair and reading.near_distance == 1.0
    assert reading.crossover in {1.0, 1e3, 1e4, 1e5}


def test_without_the_bn_none_pair_the_network_reading_says_so(network_sweep):
    reading = steps.read_network_sweep(network_sweep[network_sweep["norm"] == "batch"], "mlp")
    assert reading.verdict == steps.NO_PAIR and math.isnan(reading.near_ratio_mean)
    assert reading.near_ratio_bounds == "(needs batch and none)"


def test_the_canary_link_measures_every_canary_and_reads_against_the_crossover(network_case):
    data, models = network_case
    link = steps.probe_canaries(models, data, 8, 5, 4, "cpu")
    assert len(link) == 2 * (6 + 5) and set(link["group"]) == {"canary", "typical"}
    none = link[link["norm"] == "none"]
    assert np.allclose(none["own"], none["loo"], rtol=1e-4, atol=1e-5)  # without BN nothing couples
    near = steps.read_canary_link(link, ["batch", "none"], crossover=1e9)
    far = steps.read_canary_link(link, ["batch", "none"], crossover=0.0)
    assert near.below_crossover and near.verdict.startswith("Every canary kind lies below")
    assert not far.below_crossover and "applies to the farthest of them" in far.verdict
    assert near.distance_kind == "ood"  # the shifted images lie farthest from the batch
    assert list(near.table.columns) == ["norm", "canary/typical own", "canary/typical loo", "loo / own (canaries)"]


def test_the_chapter_verdict_follows_the_readings(linear_reading):
    network = types.SimpleNamespace(readings={"batch own": steps.BOUNDED, "batch loo": steps.BOUNDED,
                                              "none": steps.GROWING}, has_pair=True)
    simulation = types.SimpleNamespace(slower_far=True)
    link = types.SimpleNamespace(below_crossover=True)
    text = steps.theory_verdict(linear_reading, network, simulation, link)
    assert "there it **bounds** the influence" in text and "BN fits far outliers in more steps, not fewer" in text
    assert "where the canaries of chapters 2 to 4 lie" in text
    network.readings["batch own"] = steps.UNCLEAR
    unsettled = steps.theory_verdict(linear_reading, network, simulation, link)
    assert unsettled.startswith("The measured slopes do not settle")
