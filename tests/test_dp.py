"""DP-SGD shadow runs, the accountant's epsilon and the empirical epsilon lower bound."""

import math
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from bnprivacy.attacks import AttackInput, attack_scores
from bnprivacy.config import Config
from bnprivacy.data import load_dataset
from bnprivacy.ensemble import init_model
from bnprivacy.privacy.accounting import (MAX_BISECTIONS, accountant_epsilon, empirical_epsilon, epsilon_floor,
                                          epsilon_lower_bound, noise_multiplier)
from bnprivacy.privacy.opacus import UnsupportedModule, dp_config, make_private_module
from bnprivacy.privacy.training import DPRunSpec, dp_shadow_run, planned_noise, run_privacy
from bnprivacy.runs.shadow import ShadowRun
from bnprivacy.stats import clopper_pearson

CFG = Config(norm="group", width=4, epochs=2, batch_size=32, lr=0.2, train_size=128, device="cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset(CFG)


# --- accounting -----------------------------------------------------------------------------------

def test_the_accountant_epsilon_equals_opacus_after_a_real_dp_training(data):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    model = make_private_module(init_model(CFG, data, 0))
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=32,
                        generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus: a seeded generator is not secure
        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private_with_epsilon(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
            target_epsilon=3.0, target_delta=1e-5, epochs=2, max_grad_norm=1.0)
        steps = 0
        for _ in range(2):
            for x, y in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                steps += 1
        opacus_epsilon = engine.get_epsilon(1e-5)
    ours = accountant_epsilon(optimizer.noise_multiplier, loader.sample_rate, steps, 1e-5)
    assert ours == pytest.approx(opacus_epsilon, rel=1e-9)
    assert opacus_epsilon == pytest.approx(3.0, abs=0.05)
    # The cached search picks the noise make_private_with_epsilon picked.
    assert noise_multiplier(3.0, 1e-5, loader.sample_rate, steps) == pytest.approx(optimizer.noise_multiplier)


def test_the_accountant_epsilon_grows_with_steps_and_shrinks_with_noise():
    base = accountant_epsilon(1.0, 0.01, 1000, 1e-5)
    assert accountant_epsilon(1.0, 0.01, 4000, 1e-5) > base > accountant_epsilon(2.0, 0.01, 1000, 1e-5)
    # The PRV accountant is numerically tight; RDP is an upper bound on it.
    assert 0.5 * base < accountant_epsilon(1.0, 0.01, 1000, 1e-5, accountant="prv") <= base
    with pytest.raises(ValueError, match="noise_multiplier > 0"):
        accountant_epsilon(0.0, 0.01, 1000, 1e-5)


@pytest.mark.parametrize("sigma,delta", [(float("nan"), 1e-5), (float("inf"), 1e-5), (1.0, float("nan"))])
def test_a_non_finite_accountant_input_is_refused_not_searched_forever(sigma, delta):
    with pytest.raises(ValueError, match="accountant_epsilon needs"):
        accountant_epsilon(sigma, 0.01, 100, delta)


# --- the noise search -----------------------------------------------------------------------------

@pytest.mark.parametrize("epsilon, delta, rate, steps, accountant", [
    (1.0, 1e-5, 1 / 6, 90, "rdp"), (0.5, 1e-6, 0.01, 10_000, "rdp"), (50.0, 1e-5, 1.0, 30, "rdp"),
    (2.0, 1e-5, 1 / 12, 240, "prv")])
def test_the_bounded_noise_search_finds_opacus_sigma_exactly(epsilon, delta, rate, steps, accountant):
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        expected = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=rate, steps=steps,
                                        accountant=accountant)
    assert noise_multiplier.__wrapped__(epsilon, delta, rate, steps, accountant) == expected


def test_an_absurd_epsilon_is_refused_at_once_where_opacus_searches_forever():
    # In a child process, so that a search that never ends fails the test instead of hanging it.
    code = ("from bnprivacy.privacy.accounting import noise_multiplier\n"
            "try:\n    noise_multiplier(1e30, 1e-5, 0.25, 40)\nexcept ValueError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "epsilon=1e+30 is not allowed" in done.stdout and "<= 100" in done.stdout
    with pytest.raises(ValueError, match=r"epsilon=1e\+30 is not allowed.*<= 100"):
        DPRunSpec(CFG, n_models=2, epsilon=1e30)
    DPRunSpec(CFG, n_models=2, epsilon=100.0)  # the largest budget allowed


def fake_accountant(monkeypatch, epsilon_of):
    """Replace Opacus's accountants by one whose epsilon is ``epsilon_of(sigma)``; counts its calls."""
    import opacus.accountants

    calls = []

    class Fake:
        history = []

        def get_epsilon(self, delta, **_):
            calls.append(self.history[0][0])
            return epsilon_of(self.history[0][0])

    monkeypatch.setattr(opacus.accountants, "create_accountant", lambda mechanism="rdp": Fake())
    return calls


def test_a_noise_search_that_cannot_converge_raises_after_a_bounded_number_of_steps(monkeypatch):
    # epsilon jumps from 5 to 1 at sigma = 1: no sigma comes within 0.01 below the target 3.
    calls = fake_accountant(monkeypatch, lambda sigma: 5.0 if sigma < 1 else 1.0)
    with pytest.raises(ValueError, match=r"did not come within 0.01 of it in 100 halvings.*Choose another epsilon"):
        noise_multiplier.__wrapped__(3.0, 1e-5, 0.5, 7)
    assert len(calls) == 1 + MAX_BISECTIONS


def test_a_nan_epsilon_of_the_accountant_counts_as_too_large(monkeypatch):
    # Opacus stops doubling at a NaN and returns sigma = 20, whose epsilon is NaN.
    fake_accountant(monkeypatch, lambda sigma: math.nan if sigma < 30 else 240 / sigma)
    sigma = noise_multiplier.__wrapped__(8.0, 1e-5, 0.5, 7)
    assert 8.0 - 0.01 <= 240 / sigma < 8.0


def test_an_epsilon_out_of_reach_names_the_accountant_delta_and_what_to_do():
    # Below the RDP accountant's floor no noise helps: refused without a search (Opacus's takes a minute here).
    assert epsilon_floor(1e-5) == pytest.approx(0.10287, abs=1e-5) and epsilon_floor(1e-5, "prv") == 0.0
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"epsilon=0.001 is out of reach with the rdp accountant at delta=1e-05, "
                                         r"2 steps at sampling rate 0.5: .* no epsilon below 0.103.*Raise epsilon"):
        noise_multiplier(0.001, 1e-5, 0.5, 2)
    assert time.perf_counter() - started < 5


def test_an_epsilon_that_even_the_largest_noise_misses_is_refused(monkeypatch):
    calls = fake_accountant(monkeypatch, lambda sigma: 5.0)
    with pytest.raises(ValueError, match=r"epsilon=3 is out of reach .*even a noise multiplier of 1.31e\+06 gives "
                                         r"epsilon 5 .*Raise epsilon"):
        noise_multiplier.__wrapped__(3.0, 1e-5, 0.5, 7)
    assert max(calls) == 1_310_720  # 20 doubled until above 1e6, as Opacus's search


@pytest.mark.parametrize("arguments, message", [((1.0, math.nan, 0.25, 40), "delta=nan"),
                                                ((1.0, 1e-5, 0.0, 40), "sample_rate=0.0"),
                                                ((1.0, 1e-5, 0.25, 0), "steps=0"),
                                                ((1.0, 1e-5, 0.25, 4.0), "steps=4.0"),
                                                ((math.nan, 1e-5, 0.25, 40), "epsilon=nan"),
                                                ((math.inf, 1e-5, 0.25, 40), "needs no noise search")])
def test_the_noise_search_refuses_what_it_cannot_search(arguments, message):
    with pytest.raises(ValueError, match=message):
        noise_multiplier(*arguments)


# --- empirical epsilon ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [({"delta": 2}, "delta=2 is not allowed"),
                                            ({"delta": float("nan")}, "delta=nan is not allowed"),
                                            ({"confidence": 1.5}, "confidence=1.5 is not allowed")])
def test_the_empirical_epsilon_refuses_a_delta_or_confidence_outside_its_range(kwargs, message):
    scores, masks = np.array([[0.1, 0.9, 0.4, 0.7]]), np.array([[False, True, False, True]])
    with pytest.raises(ValueError, match=message):
        empirical_epsilon(scores, masks, **kwargs)


def test_clopper_pearson_has_its_closed_forms_at_zero_and_all_successes():
    lower, upper = clopper_pearson([0, 100], [100, 100], 0.025)
    assert upper[0] == pytest.approx(1 - 0.025 ** (1 / 100)) and lower[0] == 0
    assert lower[1] == pytest.approx(0.025 ** (1 / 100)) and upper[1] == 1


def test_the_epsilon_lower_bound_on_constructed_counts():
    # A perfect attack on 100 members and 100 non-members: TPR_lo = a^(1/100), FPR_hi = 1 - a^(1/100)
    # with a = 0.025 (95% confidence split over the two bounds).
    tpr_lo = 0.025 ** (1 / 100)
    assert epsilon_lower_bound(100, 0, 0, 100) == pytest.approx(math.log(tpr_lo / (1 - tpr_lo)))
    assert epsilon_lower_bound(100, 0, 0, 100) == pytest.approx(3.2813, abs=1e-4)
    # delta is subtracted from the numerator.
    assert epsilon_lower_bound(100, 0, 0, 100, delta=0.1) == pytest.approx(
        math.log((tpr_lo - 0.1) / (1 - tpr_lo)))
    # A high-precision, low-recall attack: tp=50/100, fp=0/100. First form: TPR_lo / FPR_hi.
    from scipy import stats

    tpr_lo = stats.beta.ppf(0.025, 50, 51)
    fpr_hi = 1 - 0.025 ** (1 / 100)
    expected = max(math.log(tpr_lo / fpr_hi), math.log((1 - fpr_hi) / (1 - tpr_lo)))
    assert epsilon_lower_bound(50, 0, 50, 100) == pytest.approx(expected)
    # The mirror image (no false negatives, half the non-members flagged) uses the second form.
    assert epsilon_lower_bound(100, 50, 0, 50) == pytest.approx(expected)
    # No signal, no bound; arrays give arrays.
    assert epsilon_lower_bound(50, 50, 50, 50) == 0.0
    assert epsilon_lower_bound(np.array([50, 100]), np.array([50, 0]), np.array([50, 0]),
                               np.array([50, 100])).shape == (2,)


def test_the_empirical_epsilon_chooses_its_threshold_on_one_half_and_reports_the_other():
    rng = np.random.default_rng(0)
    members = np.zeros((2, 400), dtype=bool)
    members[:, :200] = True
    separated = np.where(members, 1.0, 0.0)
    result = empirical_epsilon(separated, members)
    assert result["fp"] == 0 and result["fn"] == 0 and result["tp"] + result["tn"] == 400
    assert result["epsilon_lb"] == pytest.approx(epsilon_lower_bound(result["tp"], 0, 0, result["tn"]))
    noise = rng.normal(size=members.shape)
    assert empirical_epsilon(noise, members)["epsilon_lb"] < 0.3


# --- DP shadow runs -------------------------------------------------------------------------------

def test_a_tiny_dp_run_is_a_shadow_run_and_its_empirical_bound_stays_below_the_accountant(data):
    spec = DPRunSpec(CFG, n_models=6, epsilon=1.0)
    run = dp_shadow_run(spec, data, progress=False)
    assert isinstance(run, ShadowRun) and run.logits_pool.shape == (6, 2, len(data.y_train), 10)
    assert run.masks.sum(0).eq(3).all(), "masks are not balanced"
    privacy = run_privacy(run)
    assert list(privacy["model"]) == list(range(6))
    # What planned_noise finds before training is what every model trained with.
    planned = planned_noise(spec, run.masks)
    for column in ("model", "n", "delta", "sample_rate", "steps", "noise_multiplier"):
        assert planned[column].tolist() == privacy[column].tolist(), column
    assert (privacy["epsilon"] <= 1.0 + 1e-6).all() and (privacy["noise_multiplier"] > 0).all()
    targets = list(range(6))
    for attack in ("loss", "lira_offline"):
        scores = attack_scores(AttackInput.from_run(run), attack, targets)
        bound = empirical_epsilon(scores, run.masks, delta=float(privacy["delta"].iloc[0]))
        assert 0 <= bound["epsilon_lb"] <= privacy["epsilon"].min()


def test_a_killed_dp_run_resumes_at_the_model_it_was_training_to_the_same_models(data, isolated_store,
                                                                                 monkeypatch, chunk_spy):
    spec = DPRunSpec(CFG, n_models=2, epsilon=2.0)
    reference = dp_shadow_run(spec, data, progress=False)

    monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / "killed"))
    chunk_spy.calls.clear()
    chunk_spy.kill_at = 2
    with pytest.raises(KeyboardInterrupt):
        dp_shadow_run(spec, data, progress=False)

    chunk_spy.calls.clear()
    chunk_spy.kill_at = None
    resumed = dp_shadow_run(spec, data, progress=False)
    assert chunk_spy.calls == [[1]], "the finished first model was retrained"
    # Seeded sampling and noise: the resumed run has the same models as the uninterrupted one.
    assert torch.allclose(resumed.logits_pool, reference.logits_pool, atol=1e-5)


def test_epsilon_infinity_clips_without_noise(data):
    public = dp_shadow_run(DPRunSpec(CFG, n_models=2, epsilon=math.inf), data, progress=False)
    assert run_privacy(public)["noise_multiplier"].eq(0).all()
    assert run_privacy(public)["max_grad_norm"].eq(1.0).all()
    assert run_privacy(public)["epsilon"].eq(math.inf).all()
    assert public.final_accuracy()["epochs"].eq(CFG.epochs).all()


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("epsilon", [0, -1.0, float("nan"), "8", -math.inf, 100.5])
def test_a_non_positive_epsilon_is_refused(epsilon):
    with pytest.raises(ValueError, match=r"epsilon=.*not allowed.*number > 0 and <= 100.*or math.inf"):
        DPRunSpec(CFG, n_models=2, epsilon=epsilon)


@pytest.mark.parametrize("norm", [math.inf, math.nan, 0.0, -1.0, True, "1"])
def test_the_clipping_norm_must_be_finite_and_positive(norm):
    with pytest.raises(ValueError, match=r"max_grad_norm=.* is not allowed; allowed values: a finite number > 0"):
        DPRunSpec(CFG, n_models=2, epsilon=1.0, max_grad_norm=norm)


def test_an_epsilon_out_of_reach_fails_before_any_training(data, isolated_store):
    spec = DPRunSpec(CFG, n_models=2, epsilon=0.001)
    with pytest.raises(ValueError, match=r"DP run at epsilon=0.001 cannot train model 0 .*out of reach"):
        dp_shadow_run(spec, data, progress=False)
    assert not (isolated_store / "results" / "runs").exists()


def test_training_reuses_the_noise_found_before_it(data):
    spec = DPRunSpec(CFG, n_models=2, epsilon=4.0)
    planned = planned_noise(spec, spec.masks(len(data.y_train)))
    searched = noise_multiplier.cache_info().misses
    run = dp_shadow_run(spec, data, progress=False)
    assert noise_multiplier.cache_info().misses == searched, "training searched the noise again"
    assert run_privacy(run)["noise_multiplier"].tolist() == planned["noise_multiplier"].tolist()


def test_a_delta_of_one_over_n_or_more_is_refused_before_training(data, isolated_store):
    spec = DPRunSpec(CFG, n_models=2, epsilon=1.0, delta=0.05)
    with pytest.raises(ValueError, match=r"delta=0.05 is not below 1/n.*Use delta < 1/n"):
        dp_shadow_run(spec, data, progress=False)
    assert not (isolated_store / "results" / "runs").exists()


def test_batchnorm_is_refused_and_dp_config_swaps_in_groupnorm():
    with pytest.raises(ValueError, match="cannot train norm='batch'.*dp_config"):
        DPRunSpec(CFG.replace(norm="batch"), n_models=2, epsilon=1.0)
    assert dp_config(CFG.replace(norm="batch")).norm == "group"


def test_make_private_module_fixes_batchnorm_and_names_what_it_cannot_fix(data):
    fixed = make_private_module(init_model(CFG.replace(norm="batch"), data, 0))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))
            self.register_buffer("count", torch.zeros(()))

        def forward(self, x):
            return x * self.weight

    model = nn.Sequential(nn.Linear(3, 3))
    model.add_module("scaled", Scaled())
    with pytest.raises(UnsupportedModule, match=r"even after ModuleValidator.fix.*scaled"):
        make_private_module(model)
