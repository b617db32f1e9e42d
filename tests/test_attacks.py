import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from bnprivacy.attacks import (ATTACKS, LIRA_REFERENCE, AttackInput, LiraOptions, attack_scores, calibrate,
                               evaluate, headline_attack, logit_confidence, min_nonmembers, null_summary,
                               reference_sides, resolvable, rmia_fraction, roc, shuffled_masks, summarize,
                               tpr_at_fpr)
from bnprivacy.ensemble import balanced_masks
from bnprivacy.lira_io import export_lira, import_lira


def test_perfectly_separated_scores_have_auc_one():
    members = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    result = evaluate(np.where(members, 1.0, 0.0)[None], members[None], n_boot=50, fprs=(0.1,))
    assert result["auc"] == 1 and result["tpr@0.1"] == 1 and result["balanced_acc"] == 1


def test_a_rate_the_pool_cannot_resolve_is_nan_never_zero():
    # 0.1% FPR needs 10,000 non-members, 1% needs 1,000: 9,999 resolve the second only.
    rng = np.random.default_rng(0)
    members = np.r_[np.ones(2000, bool), np.zeros(9999, bool)]
    scores = rng.normal(size=len(members)) + members
    result = evaluate(scores[None], members[None], n_boot=20)
    assert math.isnan(result["tpr@0.001"]) and math.isnan(result["tpr@0.001_lo"])
    assert result["tpr@0.01"] > 0 and result["nonmembers"] == 9999
    fpr, tpr = roc(scores, members)
    with pytest.raises(ValueError, match=r"not resolvable with 9999 non-member pairs: it needs at least 10000"):
        tpr_at_fpr(fpr, tpr, 0.001, nonmembers=9999)
    assert resolvable(0.001, 10000) and not resolvable(0.001, 9999) and min_nonmembers(0.01) == 1000


def test_strict_threshold_reads_the_reference_codes_rate():
    # plot.py reads tpr[np.where(fpr < .001)[0][-1]]: FPR strictly below the level.
    fpr, tpr = np.array([0.0, 0.0005, 0.001, 0.5, 1.0]), np.array([0.0, 0.1, 0.2, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.2
    assert tpr_at_fpr(fpr, tpr, 0.001, inclusive=False) == tpr[np.where(fpr < .001)[0][-1]] == 0.1


def test_identical_distributions_give_an_auc_interval_covering_one_half():
    rng = np.random.default_rng(0)
    members = rng.random(4000) < 0.5
    result = evaluate(rng.normal(size=4000)[None], members[None], n_boot=200)
    assert result["auc_lo"] <= 0.5 <= result["auc_hi"]


def test_roc_and_tpr_at_fpr_agree_with_sklearn():
    rng = np.random.default_rng(1)
    members = rng.random(3000) < 0.4
    scores = np.round(rng.normal(size=3000) + members * 0.8, 2)  # ties included
    fpr, tpr = roc(scores, members)
    sk_fpr, sk_tpr, _ = roc_curve(members, scores, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    for level in (0.001, 0.01, 0.1):
        assert tpr_at_fpr(fpr, tpr, level) == sk_tpr[sk_fpr <= level].max()


@pytest.mark.parametrize("level", [0.0, 1.0, -0.1, 2])
def test_fpr_outside_zero_one_is_refused(level):
    with pytest.raises(ValueError, match=r"target FPR.*\(0, 1\)"):
        summarize([0.1, 0.9], [False, True], fprs=(level,))


def synthetic(n_models=32, samples=400, classes=4, gap=1.5, seed=0):
    """Logits whose true-class margin is higher by ``gap`` in models that trained on the sample."""
    generator = torch.Generator().manual_seed(seed)
    masks = balanced_masks(n_models, samples, seed=seed + 1000)  # a stream apart from the logits
    labels = torch.randint(0, classes, (samples,), generator=generator)
    logits = torch.randn(n_models, 2, samples, classes, generator=generator)
    logits[:, :, torch.arange(samples), labels] += 2.0 + gap * masks.float().unsqueeze(1)
    population = torch.randn(n_models, 2, 300, classes, generator=generator)
    pop_labels = torch.randint(0, classes, (300,), generator=generator)
    population[:, :, torch.arange(300), pop_labels] += 2.0
    return AttackInput(logits, labels, masks, population, pop_labels)


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_finds_a_planted_membership_signal(attack):
    data = synthetic()
    targets = list(range(4))
    scores = attack_scores(data, attack, targets)
    assert scores.shape == (4, 400)
    # Correctness saturates (most samples are classified correctly IN or OUT): a weaker baseline.
    assert evaluate(scores, data.masks[targets], n_boot=0)["auc"] > (0.55 if attack == "correct" else 0.75)


# The model counts the book uses (8 and 16) and beyond; at 32 and 64, 16 targets pool enough pairs.
@pytest.mark.parametrize("n_models", [8, 16, 32, 64])
def test_every_attack_reads_chance_without_a_membership_signal(n_models):
    seeds = range(8)
    metrics = {attack: [] for attack in ATTACKS}
    for seed in seeds:
        data = synthetic(n_models=n_models, samples=2000, gap=0.0, seed=seed)
        targets = list(range(min(n_models, 16)))
        for attack in ATTACKS:
            scores = attack_scores(data, attack, targets)
            metrics[attack].append(summarize(scores.numpy(), data.masks[targets].numpy(), fprs=(0.01,)))
    members = len(targets) * 1000 * len(seeds)
    for attack, values in metrics.items():
        auc = np.array([m["auc"] for m in values])
        assert abs(auc.mean() - 0.5) <= 0.01, (attack, auc.mean())
        if attack == "correct":
            continue  # one threshold: no operating point at 1% FPR, its TPR there is 0 by construction
        tpr = np.array([m["tpr@0.01"] for m in values])
        noise = max(math.sqrt(0.01 * 0.99 / members), tpr.std(ddof=1) / math.sqrt(len(tpr)))
        assert abs(tpr.mean() - 0.01) <= 3 * noise, (attack, tpr.mean(), noise)


@pytest.mark.parametrize("n_models", [8, 16])
def test_every_attack_finds_a_weak_planted_signal_at_the_books_model_counts(n_models):
    for attack in ATTACKS:
        aucs = [evaluate(attack_scores(data, attack, range(n_models)), data.masks, n_boot=0)["auc"]
                for data in (synthetic(n_models=n_models, samples=1000, gap=0.4, seed=s) for s in range(3))]
        assert np.mean(aucs) > 0.52, (attack, aucs)


def test_untrimmed_online_lira_reads_below_chance_at_eight_models():
    # The bias the trimming removes (issue 21): leaving the target out unbalances its own side.
    aucs = {trim: [] for trim in ("none", "per_sample")}
    for seed in range(4):
        data = synthetic(n_models=8, samples=2000, gap=0.0, seed=seed)
        for trim in aucs:
            scores = attack_scores(data, "lira_online", range(8), lira=LiraOptions(trim=trim))
            aucs[trim].append(evaluate(scores, data.masks, n_boot=0)["auc"])
    assert np.mean(aucs["none"]) < 0.45 and abs(np.mean(aucs["per_sample"]) - 0.5) < 0.01


def test_trimming_keeps_the_first_references_of_each_side_equal_in_number():
    masks = torch.tensor([[1, 0], [1, 1], [0, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.bool)
    inside, outside = reference_sides(masks, target=1)
    # Sample 0: IN {0, 3}, OUT {2, 4, 5} -> 2 each, the first in model order.
    assert inside[:, 0].nonzero().flatten().tolist() == [0, 3]
    assert outside[:, 0].nonzero().flatten().tolist() == [2, 4]
    # Sample 1: IN {4, 5} (the target is left out), OUT {0, 2, 3} -> 2 each.
    assert inside[:, 1].nonzero().flatten().tolist() == [4, 5]
    assert outside[:, 1].nonzero().flatten().tolist() == [0, 2]
    untrimmed_in, untrimmed_out = reference_sides(masks, target=1, trim="none")
    assert int(untrimmed_out[:, 0].sum()) == 3


def plot_py_scores(phi: np.ndarray, keep: np.ndarray, target: int, online: bool, fix_variance: bool) -> np.ndarray:
    """tensorflow/privacy research/mi_lira_2021/plot.py, generate_ours and generate_ours_offline,
    re-typed from its equations: ``scores [N, P, Q]``, ``keep [N, P]``, the target held out as the
    check model, every other model a reference in order. Returns the score where higher = member
    (plot.py's sweep negates its prediction)."""
    from scipy.stats import norm

    refs = np.delete(np.arange(len(keep)), target)
    keep_r, scores_r = keep[refs], phi[refs]
    dat_in = [scores_r[keep_r[:, j], j, :] for j in range(scores_r.shape[1])]
    dat_out = [scores_r[~keep_r[:, j], j, :] for j in range(scores_r.shape[1])]
    in_size, out_size = min(map(len, dat_in)), min(map(len, dat_out))
    dat_in = np.array([x[:in_size] for x in dat_in])
    dat_out = np.array([x[:out_size] for x in dat_out])
    mean_in, mean_out = np.median(dat_in, 1), np.median(dat_out, 1)
    sc = phi[target]
    if online:
        std_in, std_out = (np.std(dat_in), np.std(dat_in)) if fix_variance else (np.std(dat_in, 1), np.std(dat_out, 1))
        prediction = -norm.logpdf(sc, mean_in, std_in + 1e-30) + norm.logpdf(sc, mean_out, std_out + 1e-30)
    else:
        std_out = np.std(dat_out) if fix_variance else np.std(dat_out, 1)
        prediction = norm.logpdf(sc, mean_out, std_out + 1e-30)
    return -prediction.mean(1)


@pytest.mark.parametrize("attack", ["lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed"])
def test_reference_preset_reproduces_plot_py(attack):
    data = synthetic(n_models=10, samples=300, gap=1.0, seed=3)
    # Random (unbalanced) masks, as the reference's keep.npy: trimming then varies per side.
    generator = torch.Generator().manual_seed(5)
    data.masks = torch.rand(10, 300, generator=generator) < 0.5
    data.masks[:3, :] = True  # every sample has at least 3 IN
    data.masks[3:6, :] = False  # and at least 3 OUT models
    phi = logit_confidence(data.logits, data.labels).permute(0, 2, 1).numpy()  # [N, P, Q]
    for target in (0, 4, 9):
        ours = attack_scores(data, attack, [target], lira="reference")[0].numpy()
        expected = plot_py_scores(phi, data.masks.numpy(), target, "online" in attack, "fixed" in attack)
        assert np.allclose(ours, expected, rtol=0, atol=1e-9)
    assert LIRA_REFERENCE.location == "median"


def test_lira_options_are_checked():
    with pytest.raises(ValueError, match=r"LiraOptions location='mode' is not allowed; allowed values: 'mean', 'median'"):
        LiraOptions(location="mode")
    with pytest.raises(ValueError, match=r"lira='plot' is not allowed"):
        attack_scores(synthetic(n_models=8), "lira_online", [0], lira="plot")


def test_rmia_on_a_hand_computed_case():
    # Two classes, one view; p(x|model) of the label is set through logits [log p, log(1 - p)].
    def logits_of(p):
        p = torch.tensor(p, dtype=torch.float64)
        return torch.stack([p.log(), (1 - p).log()], -1)

    p_x = [[0.9], [0.8], [0.4], [0.6], [0.5]]  # model 0 is the target; 1, 2 IN-or-OUT below
    p_z = [[0.5, 0.7, 0.2]] * 5  # every model alike on the population
    masks = torch.tensor([[True], [True], [False], [True], [False]])
    data = AttackInput(logits_of(p_x).unsqueeze(1).float(), torch.tensor([0]), masks,
                       logits_of(p_z).unsqueeze(1).float(), torch.tensor([0, 0, 0]))
    # Online: references 1..4, IN {1, 3}, OUT {2, 4}: p(x) = (0.8 + 0.4 + 0.6 + 0.5) / 4 = 0.575;
    # ratio_x = 0.9 / 0.575 = 1.565; every z has ratio 1 -> all 3 below (gamma 1), fraction 1.
    online = attack_scores(data, "rmia_online", [0], rmia_gamma=1.0)[0, 0].item()
    assert 1.0 < online < 1.0 + 1 / 3
    # Offline, a = 0.3: p_out(x) = (0.4 + 0.5) / 2 = 0.45 -> p(x) = (1.3 * 0.45 + 0.7) / 2 = 0.6425,
    # ratio_x = 1.401; p(z) = (1.3 p_z + 0.7) / 2 -> ratio_z = p_z / that: 0.741, 0.870, 0.417 (below
    # 1.401 / gamma for gamma 1.5 -> 0.934: all three; for gamma 2 -> 0.700: one of them).
    assert 1.0 <= attack_scores(data, "rmia", [0], rmia_gamma=1.5)[0, 0].item() < 1 + 1 / 3
    assert 1 / 3 <= attack_scores(data, "rmia", [0], rmia_gamma=2.0)[0, 0].item() < 2 / 3
    with pytest.raises(ValueError, match=r"rmia_a=1.5 is not allowed"):
        attack_scores(data, "rmia", [0], rmia_a=1.5)


def test_rmia_ties_are_broken_by_the_ratio_without_reordering_fractions():
    ratio_z = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    ratio_x = torch.tensor([10.0, 100.0, 2.5, 2.6, 0.1], dtype=torch.float64)
    scores = rmia_fraction(ratio_x, ratio_z, gamma=1.0)
    counts = torch.floor(scores * 4)
    assert counts.tolist() == [4, 4, 2, 2, 0]  # the reference fraction, times T
    assert scores[1] > scores[0] and scores[3] > scores[2]  # ties ordered by the ratio
    assert len(set(scores.tolist())) == 5


def test_calibration_reads_chance_where_the_real_masks_read_signal():
    data = synthetic(n_models=16, samples=800, gap=1.5, seed=2)
    null = null_summary(calibrate(data, ["lira_online", "loss"], range(16), draws=3))
    assert abs(null.loc["lira_online", "auc"] - 0.5) < 0.02 and abs(null.loc["loss", "auc"] - 0.5) < 0.02
    real = evaluate(attack_scores(data, "lira_online", range(16)), data.masks, n_boot=0)["auc"]
    assert real > 0.75
    shuffled = shuffled_masks(data.masks, seed=0)
    assert torch.equal(shuffled.sum(0), data.masks.sum(0)) and not torch.equal(shuffled, data.masks)
    # Never the masks' own random stream (that shuffle sorts every sample IN for the same models).
    for seed in range(3):
        per_model = shuffled_masks(balanced_masks(16, 2000, seed=seed), seed=seed).float().mean(1)
        assert (per_model - 0.5).abs().max() < 0.05


def test_a_null_read_on_a_subset_of_the_pool_reads_chance_there_and_counts_only_that_subset():
    # 16 models and a subset of 120 of 800 samples: about the rare third of the book's long-tailed pool
    data = synthetic(n_models=16, samples=800, gap=1.5, seed=3)
    subset = torch.zeros(800, dtype=torch.bool)
    subset[::7] = True
    whole = calibrate(data, ["lira_online"], range(16), draws=3)
    part = calibrate(data, ["lira_online"], range(16), draws=3, select=subset)
    assert (part.members + part.nonmembers == 16 * int(subset.sum())).all()
    assert (whole.members + whole.nonmembers == 16 * 800).all()
    assert abs(part.auc.mean() - 0.5) < 0.03
    for bad in (subset[:10], subset.float(), torch.zeros(800, dtype=torch.bool)):
        with pytest.raises(ValueError, match="select must be"):
            calibrate(data, ["lira_online"], range(16), draws=2, select=bad)


def test_the_headline_attack_is_the_first_calibrated_one():
    import pandas as pd

    null = pd.DataFrame({"auc": [0.43, 0.501, 0.499], "tpr@0.01": [0.004, 0.0102, 0.01],
                         "members": [8000, 8000, 8000]}, index=["lira_online", "rmia_online", "loss"])
    assert headline_attack(null) == "rmia_online"
    null.loc["rmia_online", "tpr@0.01"] = 0.03  # a null TPR far off 1%
    assert headline_attack(null) == "loss"
    with pytest.raises(ValueError, match="none of the attacks"):
        headline_attack(null.drop(index="loss"))


def test_lira_fits_gaussians_with_known_means_and_variances():
    # phi is exactly N(3, 0.5^2) for IN models and N(0, 1) for OUT ones (one view, one sample).
    rng = np.random.default_rng(0)
    n = 4001
    masks = torch.zeros(n, 1, dtype=torch.bool)
    masks[1::2] = True
    phi = torch.from_numpy(np.where(masks[:, 0].numpy(), rng.normal(3, 0.5, n), rng.normal(0, 1, n)))
    # Logits [a, 0] with label 0 give phi = a exactly.
    logits = torch.zeros(n, 1, 1, 2, dtype=torch.float64)
    logits[:, 0, 0, 0] = phi
    data = AttackInput(logits, torch.tensor([0]), masks)
    assert torch.allclose(logit_confidence(logits, data.labels)[:, 0, 0], phi)
    x = 2.0
    expected = (-math.log(0.5) - 0.5 * ((x - 3) / 0.5) ** 2) - (-0.5 * x ** 2)
    data.logits[0, 0, 0, 0] = x
    got = attack_scores(data, "lira_online", [0])[0, 0].item()
    assert got == pytest.approx(expected, abs=0.1)
    offline = attack_scores(data, "lira_offline", [0])[0, 0].item()
    assert offline == pytest.approx(math.log(0.5 * (1 + math.erf(x / math.sqrt(2)))), abs=0.02)


def test_bad_targets_and_too_few_reference_models_are_explained():
    data = synthetic(n_models=4)
    with pytest.raises(ValueError, match=r"outside the run.*\[0, 4\)"):
        attack_scores(data, "lira_online", [4])
    with pytest.raises(ValueError, match="fewer than 2 IN reference models"):
        attack_scores(data, "lira_online", [0])  # 3 references: 1 or 2 IN per sample
    with pytest.raises(ValueError, match="attack='shokri'"):
        attack_scores(data, "shokri", [0])


def test_lira_layout_round_trip_and_reference_score(tmp_path):
    data = synthetic(n_models=4, samples=50)

    class Run:  # the attributes of a ShadowRun that the export reads
        masks, logits_pool, y_pool = data.masks, data.logits, data.labels
        import pandas as pd
        history = pd.DataFrame({"epoch": [7]})
        query_mode = "eval"

    root = export_lira(Run, tmp_path / "exp")
    assert (root / "experiment-3_4" / "logits" / "0000000007.npy").is_file()
    back = import_lira(root)
    assert torch.equal(back.masks, data.masks) and torch.equal(back.labels, data.labels)
    assert torch.allclose(back.logits, data.logits)
    # The reference score.py's formula, in float64 numpy, on the exported file.
    opred = np.load(root / "experiment-1_4" / "logits" / "0000000007.npy")
    pred = np.exp(opred - opred.max(axis=3, keepdims=True)).astype(np.float64)
    pred /= pred.sum(axis=3, keepdims=True)
    labels = np.load(root / "y_train.npy")
    y_true = pred[np.arange(50), :, :, labels]
    pred[np.arange(50), :, :, labels] = 0
    reference = np.log(y_true.mean(1) + 1e-45) - np.log(pred.sum(3).mean(1) + 1e-45)
    ours = logit_confidence(data.logits[1], data.labels).T.numpy()
    assert np.allclose(reference, ours, atol=1e-5)


def test_import_explains_a_folder_that_is_not_lira(tmp_path):
    with pytest.raises(ValueError, match="y_train.npy is missing"):
        import_lira(tmp_path)


def exported(tmp_path, samples=20):
    data = synthetic(n_models=4, samples=samples)

    class Run:  # the attributes of a ShadowRun that the export reads
        masks, logits_pool, y_pool = data.masks, data.logits, data.labels
        import pandas as pd
        history = pd.DataFrame({"epoch": [7]})
        query_mode = "eval"

    return export_lira(Run, tmp_path / "exp")


@pytest.mark.parametrize("damage, message", [
    (lambda r: np.save(r / "experiment-0_4" / "keep.npy", np.full(20, 0.3)),
     r"experiment-0_4/keep.npy holds float64 values other than 0 and 1"),
    (lambda r: np.save(r / "experiment-0_4" / "keep.npy", np.ones(25, dtype=bool)),
     r"experiment-0_4/keep.npy has shape \(25,\); expected one entry per pool sample, \[20\]"),
    (lambda r: np.save(r / "experiment-2_4" / "logits" / "0000000007.npy", np.zeros((20, 1, 2, 7), np.float32)),
     r"experiment-2_4/logits/0000000007.npy has 2 queries and 7 classes but .*experiment-0_4 has"),
    (lambda r: np.save(r / "y_train.npy", np.full(20, 12)),
     r"y_train.npy holds label 12 but the logits have 4 classes \(labels 0 ... 3\)"),
    (lambda r: np.save(r / "y_train.npy", np.zeros((20, 2), dtype=np.int64)),
     r"y_train.npy holds int64 of shape \(20, 2\)"),
    (lambda r: np.save(r / "experiment-1_4" / "logits" / "0000000007.npy", np.zeros((20, 3)), allow_pickle=False),
     r"experiment-1_4/logits/0000000007.npy has shape \(20, 3\)"),
    (lambda r: np.save(r / "y_train.npy", np.array([{"x": 1}] * 20, dtype=object), allow_pickle=True),
     r"y_train.npy is not a plain numeric .npy array"),
])
def test_import_refuses_malformed_files_naming_them(tmp_path, damage, message):
    root = exported(tmp_path)
    damage(root)
    with pytest.raises(ValueError, match=message):
        import_lira(root)


def test_import_reads_a_keep_of_zeros_and_ones_as_membership(tmp_path):
    root = exported(tmp_path)
    keep = np.load(root / "experiment-0_4" / "keep.npy")
    np.save(root / "experiment-0_4" / "keep.npy", keep.astype(np.int64))
    assert torch.equal(import_lira(root).masks[0], torch.from_numpy(keep))
