"""Long-tailed pools (natural outliers as rare classes) and the readings per class-frequency bucket."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from bnprivacy.protocol.comparisons import Comparison
from bnprivacy.analysis import canary_steps
from bnprivacy.analysis import membership as attack_steps
from bnprivacy.config import Config
from bnprivacy.data import load_dataset
from bnprivacy.longtail import BUCKETS, CANARY, frequency_buckets, long_tail_pool, long_tail_sizes


# --- the pool ----------------------------------------------------------------------------------

@pytest.mark.parametrize("imbalance, total", [(10, 2000), (50, 2000), (100, 12406), (10, 400), (1, 2003)])
def test_class_sizes_decay_exponentially_and_sum_to_the_pool(imbalance, total):
    sizes = long_tail_sizes(10, imbalance, total)
    assert sum(sizes) == total and all(a >= b for a, b in zip(sizes, sizes[1:]))
    exact = [imbalance ** (-k / 9) for k in range(10)]
    exact = [w / sum(exact) * total for w in exact]
    assert all(abs(s - e) < 1 for s, e in zip(sizes, exact))  # rounding moves no class by a whole image


def test_the_cifar10_lt_of_the_literature_is_reproduced():
    # Cao et al. (2019): n_max = 5,000 and imbalance 100 give 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50.
    head = [int(5000 * 100 ** (-k / 9)) for k in range(10)]
    assert head == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    y = torch.arange(10).repeat_interleave(5000)
    _, kept = long_tail_pool(torch.zeros(len(y), 1), y, 10, 100, 0, seed=0)
    assert torch.bincount(kept).tolist() == head


def test_a_tiny_pool_keeps_one_image_of_every_class():
    sizes = long_tail_sizes(10, 100, 12)
    assert sum(sizes) == 12 and min(sizes) == 1 and sizes[0] == max(sizes)


@pytest.mark.parametrize("imbalance", [0.5, math.nan, math.inf, "10", True])
def test_an_imbalance_below_one_or_not_a_number_is_refused(imbalance):
    with pytest.raises(ValueError, match="imbalance"):
        long_tail_sizes(10, imbalance, 100)
    with pytest.raises(ValueError, match="imbalance"):
        Config(imbalance=imbalance)


def test_the_pool_is_drawn_without_replacement_reproducibly_and_a_short_class_is_named():
    y = torch.arange(10).repeat_interleave(50)
    x = torch.arange(len(y)).float().view(-1, 1)
    a = long_tail_pool(x, y, 10, 10, 200, seed=3)
    b = long_tail_pool(x, y, 10, 10, 200, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(set(a[0].flatten().tolist())) == 200  # no image twice
    assert torch.bincount(a[1], minlength=10).tolist() == long_tail_sizes(10, 10, 200)
    assert not torch.equal(long_tail_pool(x, y, 10, 10, 200, seed=4)[0], a[0])
    with pytest.raises(ValueError, match="class 0 but the training split has 50"):
        long_tail_pool(x, y, 10, 10, 450, seed=0)


def test_the_loader_makes_the_pool_long_tailed_and_keeps_the_test_split_balanced():
    data = load_dataset(Config(train_size=400, imbalance=10))
    assert torch.bincount(data.y_train).tolist() == long_tail_sizes(10, 10, 400)
    assert len(data.y_test) == len(load_dataset(Config(train_size=400)).y_test)


def test_imbalance_one_is_the_pool_and_the_key_of_before():
    assert Config(imbalance=1).key() == Config().key() == Config(imbalance=1.0).key()
    assert Config(imbalance=10).key() == Config(imbalance=10.0).key() != Config().key()
    # The key of Config() before the field existed (tests/test_old_runs.py holds a whole run of then).
    assert Config(train_size=400).key() == Config(train_size=400, imbalance=1.0).key()
    assert torch.equal(load_dataset(Config(train_size=400, imbalance=1)).x_train,
                       load_dataset(Config(train_size=400)).x_train)


# --- the buckets -------------------------------------------------------------------------------

def test_classes_are_bucketed_by_their_count_in_the_pool_and_canaries_apart():
    counts = [40, 30, 25, 20, 15, 12, 10, 8, 6, 5]
    labels = np.repeat(np.arange(10), counts)
    kinds = np.array(["typical"] * len(labels), dtype=object)
    kinds[:3] = "noise"  # three canaries among class 0's samples
    buckets = frequency_buckets(labels, kinds)
    assert (buckets[:3] == CANARY).all()
    bucket_of = {c: buckets[(labels == c) & (kinds == "typical")][0] for c in range(10)}
    assert [bucket_of[c] for c in range(10)] == [BUCKETS[0]] * 4 + [BUCKETS[1]] * 3 + [BUCKETS[2]] * 3
    with pytest.raises(ValueError, match="at least 3 classes"):
        frequency_buckets([0, 0, 1], ["typical"] * 3)


def _comparison(comparable: bool = True) -> Comparison:
    reason = "" if comparable else "none did not fit (IN accuracy 0.984 < 0.99, at 56 epochs)"
    return Comparison("matched fit", "none", 20, 56, 0.05, 0.05, 1.0, 0.984, 0.9, 0.88, True, comparable,
                               comparable, reason)


FAIR = _comparison()


def _detail(effect_on_rare: float, seed: int = 0) -> canary_steps.SettingDetail:
    """Per-sample memorization of a long-tailed pool, 3 seeds per norm; BN adds ``effect_on_rare``
    on the rare classes only; everything else is noise of one distribution for both norms."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), long_tail_sizes(10, 10, 300))
    kinds = np.array(["typical"] * len(labels), dtype=object)
    kinds[:5] = "noise"
    frames = []
    for norm in ("batch", "none"):
        for s in range(3):
            mem = rng.uniform(0, 0.3, len(labels))
            if norm == "batch":
                mem = mem + effect_on_rare * (labels >= 7)
            frames.append(pd.DataFrame({"mem": mem, "kind": kinds, "label": labels, "norm": norm, "seed": s,
                                        "budget": 20}))
    return canary_steps.SettingDetail(pd.concat(frames, ignore_index=True), pd.DataFrame(), pd.DataFrame(),
                                      pd.DataFrame())


def test_memorization_by_class_frequency_reads_no_difference_where_there_is_none():
    for seed in range(3):
        table = canary_steps.frequency_table(_detail(0.0, seed), FAIR)
        assert list(table["class frequency"]) == list(BUCKETS)
        assert (table["reading"] == "inconclusive").all(), table


def test_memorization_by_class_frequency_finds_an_effect_on_rare_classes_only():
    table = canary_steps.frequency_table(_detail(0.2), FAIR).set_index("class frequency")
    assert table.loc["rare classes", "reading"] == "BN higher"
    assert table.loc["rare classes", "classes"] == "7, 8, 9" and table.loc["frequent classes", "classes"] == "0, 1, 2, 3"
    assert table.loc["rare classes", "BN"] - table.loc["rare classes", "none"] == pytest.approx(0.2, abs=0.02)
    assert table.loc["rare classes", "samples"] == sum(long_tail_sizes(10, 10, 300)[7:])
    assert (table.loc[["frequent classes", "middle classes"], "reading"] == "inconclusive").all()
    # A side that did not fit makes no bucket evidence, however clear its interval.
    unfair = canary_steps.frequency_table(_detail(0.2), _comparison(False))
    assert (unfair["reading"] == "not comparable: none did not fit (IN accuracy 0.984 < 0.99, at 56 epochs)").all()
    sentence = canary_steps.frequency_sentence(unfair, _comparison(False))
    assert sentence.startswith("These runs are not evidence (not comparable: none did not fit") and "BN higher" not in sentence


def test_two_seeds_or_seeds_that_agree_exactly_resolve_nothing():
    detail = _detail(0.2)
    two = canary_steps.SettingDetail(detail.scores[detail.scores.seed < 2], *([pd.DataFrame()] * 3))
    assert (canary_steps.frequency_table(two, FAIR)["reading"] == "not resolved (2 seeds)").all()
    scores = detail.scores.copy()
    scores.loc[scores.norm == "batch", "mem"] = scores.loc[scores.norm == "none", "mem"].to_numpy() + 0.1
    flat = canary_steps.frequency_table(canary_steps.SettingDetail(scores, *([pd.DataFrame()] * 3)), FAIR)
    assert (flat["reading"] == "not resolved (3 seeds)").all()


class _Run:
    def __init__(self, masks):
        self.masks = masks


def _attacked_without_signal(seed: int, pool: int = 1337):
    """16 targets over a pool of the quick book's size, scores independent of membership."""
    rng = np.random.default_rng(seed)
    runs = {norm: _Run(rng.random((16, pool)) < 0.5) for norm in ("batch", "none")}
    scores = {(norm, "lira_online"): rng.normal(size=(16, pool)) for norm in runs}
    return attack_steps.Attacked(runs, scores, list(range(16)), pd.DataFrame())


def test_membership_by_group_reads_chance_on_scores_without_signal_at_the_books_sizes():
    pool = 1337
    labels = np.repeat(np.arange(10), long_tail_sizes(10, 10, pool))
    buckets = frequency_buckets(labels, ["typical"] * pool)
    # The null: over 10 draws x 3 buckets x 2 norms, the AUC centres on 0.5 and its 95% interval
    # misses 0.5 about 5% of the time (3 of 60 expected; 8 or more has probability < 1%).
    tables = [attack_steps.by_group(_attacked_without_signal(seed), buckets, "lira_online", n_boot=50, order=BUCKETS)
              for seed in range(10)]
    null = pd.concat(tables)
    assert list(tables[0].index.unique("samples")) == list(BUCKETS)
    assert abs(null["auc"].mean() - 0.5) < 0.005
    assert ((null["auc_lo"] > 0.5) | (null["auc_hi"] < 0.5)).sum() < 8
    sentence = attack_steps.group_sentence(tables[0], "LiRA", FAIR)
    assert sentence.startswith("AUC of LiRA: on frequent classes, 0.") and "with BN against" in sentence
    unfair = attack_steps.group_sentence(tables[0], "LiRA", _comparison(False))
    assert unfair.startswith("These runs are not evidence (not comparable: none did not fit (IN accuracy 0.984")
    attacked = _attacked_without_signal(0)
    runs, scores = attacked.runs, attacked.scores
    # A signal on the rare classes only is found there and nowhere else.
    rare = buckets == "rare classes"
    for norm in runs:
        scores[norm, "lira_online"][:, rare] += 2.0 * runs[norm].masks[:, rare]
    table = attack_steps.by_group(attacked, buckets, "lira_online", n_boot=100, order=BUCKETS)
    assert (table.xs("rare classes")["auc_lo"] > 0.8).all()
    assert (table.xs("frequent classes")["auc_lo"] < 0.5).all()
