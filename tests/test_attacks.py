import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from bnprivacy.attacks import (ATTACKS, AttackInput, attack_scores, evaluate, logit_confidence, roc,
                               summarize, tpr_at_fpr)
from bnprivacy.ensemble import balanced_masks
from bnprivacy.lira_io import export_lira, import_lira


def test_perfectly_separated_scores_have_auc_one():
    members = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    result = evaluate(np.where(members, 1.0, 0.0)[None], members[None], n_boot=50)
    assert result["auc"] == 1 and result["tpr@0.001"] == 1 and result["balanced_acc"] == 1


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
    assert evaluate(scores, data.masks[targets], n_boot=0)["auc"] > 0.75


@pytest.mark.parametrize("attack", ["lira_online", "lira_offline", "rmia", "loss"])
def test_no_membership_signal_means_chance(attack):
    # A 95% interval misses 0.5 now and then by chance: check its coverage over repetitions.
    covered = []
    for seed in range(12):
        data = synthetic(gap=0.0, seed=seed)
        result = evaluate(attack_scores(data, attack, range(8)), data.masks[:8], n_boot=100, seed=seed)
        covered.append(result["auc_lo"] <= 0.5 <= result["auc_hi"])
        assert abs(result["auc"] - 0.5) < 0.05
    assert sum(covered) >= 9


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
