"""Chapter 04's steps: membership-inference attacks on the shared family's runs, read through the
protocol's comparisons."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .. import protocol
from ..attacks import ATTACK_NAMES, AttackInput, attack_scores, evaluate, summarize, vulnerability
from ..memorization import run_memorization
from ..reading import fmt_interval
from .sweep import Family, Measured, measure_family

SHOWN_ATTACKS = ("lira_online", "lira_offline", "lira_online_fixed", "rmia", "loss")
MEASURES = {"auc": "LiRA online AUC", "tpr@0.001": "LiRA online TPR at 0.1% FPR"}


def check_targets(n_targets, n_models: int) -> list[int]:
    """The target models ``0 .. n_targets-1``; raises ``ValueError`` unless 1 <= n_targets <= n_models."""
    if isinstance(n_targets, bool) or not isinstance(n_targets, int) or not 1 <= n_targets <= n_models:
        raise ValueError(f"n_targets={n_targets!r} is not allowed; allowed values: an integer between 1 and "
                         f"n_models={n_models}")
    return list(range(n_targets))


def lira_metrics(run, targets: list[int]) -> dict:
    """LiRA online (leave the target out) on ``targets`` of one run, pooled: AUC and TPR at low FPR."""
    scores = attack_scores(AttackInput.from_run(run), "lira_online", targets)
    return summarize(np.asarray(scores).ravel(), np.asarray(run.masks[targets]).ravel())


def compare_attacks(fam: Family, targets: list[int]) -> Measured:
    """LiRA online AUC and TPR at 0.1% FPR of every run under the protocol's comparisons; each run's
    value pools its targets, the interval is over seeds."""
    # Score each run once; both measures read the same scores (runs are keyed by their folder).
    metrics = {run.folder: lira_metrics(run, targets) for run in fam.sweep.runs.values()}
    measures = {m: (lambda run, m=m: metrics[run.folder][m]) for m in MEASURES}
    return measure_family(fam, measures, MEASURES, "BN models are more vulnerable", setting_sentence)


def setting_sentence(values: dict[str, pd.DataFrame], c: protocol.Comparison) -> str:
    """What one comparison says about LiRA online's AUC and low-FPR TPR, in words."""
    parts = []
    for m, unit, scale in (("auc", "", 1), ("tpr@0.001", " points", 100)):
        d = protocol.difference(values[m], c)
        reading = protocol.reading(c, d["lo"], d["hi"], "higher with BN", "lower with BN")
        parts.append(f"{MEASURES[m]} {fmt_interval(d['diff'], d['lo'], d['hi'], scale=scale, unit=unit)} ({reading})")
    return (f"At {c.setting} (BN at {c.epochs_bn} epochs, {c.reference} at {c.epochs_ref}), BN minus "
            f"{c.reference}: " + "; ".join(parts) + ".")


@dataclasses.dataclass
class Attacked:
    """Every shown attack's scores on one run per norm (seed 0 of one comparison's sides)."""

    runs: dict
    scores: dict
    targets: list[int]

    def table(self, n_boot: int = 200, select=None) -> pd.DataFrame:
        """Pooled metrics per (norm, attack) with bootstrap intervals over (target, sample) pairs."""
        rows = [{"norm": norm, "attack": ATTACK_NAMES[attack],
                 **evaluate(s, self.runs[norm].masks[self.targets], n_boot=n_boot, select=select)}
                for (norm, attack), s in self.scores.items()]
        return pd.DataFrame(rows)


def attack_setting(fam: Family, c: protocol.Comparison, targets: list[int], seed: int = 0,
                   query_mode: str = "eval", norms=None) -> Attacked:
    """Score every shown attack on seed ``seed`` of both sides of comparison ``c`` (or of ``norms``).
    ``query_mode="train"`` queries BN with the query batch's statistics (the LiRA reference code)."""
    from ..store import shadow_run

    runs, scores = {}, {}
    for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref)):
        if norms is not None and norm not in norms:
            continue
        run = fam.run(norm, budget, seed)
        if query_mode != "eval":
            run = shadow_run(run.spec, fam.data, query_mode=query_mode, progress=False)
        runs[norm] = run
        attack_input = AttackInput.from_run(run)
        for attack in SHOWN_ATTACKS:
            scores[norm, attack] = attack_scores(attack_input, attack, targets)
    return Attacked(runs, scores, targets)


def interval_table(table: pd.DataFrame, columns=("auc", "tpr@0.001", "tpr@0.01"), index=("attack", "norm")) -> pd.DataFrame:
    """Metrics as "value [lo, hi]" text, one row per (attack, norm)."""
    shown = table.set_index(list(index))
    out = pd.DataFrame(index=shown.index)
    for c in columns:
        out[c] = [fmt_interval(v, lo, hi, signed=False) for v, lo, hi in
                  zip(shown[c], shown[f"{c}_lo"], shown[f"{c}_hi"])]
    return out.sort_index(level=0, sort_remaining=False)


def by_group(attacked: Attacked, is_canary: np.ndarray, n_boot: int = 200) -> pd.DataFrame:
    """LiRA online on canaries and on typical samples separately, per norm."""
    rows = []
    for norm, run in attacked.runs.items():
        for group, select in (("canaries", is_canary), ("typical", ~is_canary)):
            r = evaluate(attacked.scores[norm, "lira_online"], run.masks[attacked.targets], n_boot=n_boot, select=select)
            rows.append({"norm": norm, "samples": group, "auc": r["auc"], "auc_lo": r["auc_lo"], "auc_hi": r["auc_hi"],
                         "tpr@0.01": r["tpr@0.01"]})
    return pd.DataFrame(rows).set_index(["samples", "norm"]).sort_index()


def reference_growth(attacked: Attacked, n_models: int) -> pd.DataFrame:
    """TPR at 1% FPR and AUC of LiRA online/offline as the number of reference models grows.

    Samples with fewer than 2 IN (online) or OUT reference models among the first ``count`` are
    left unscored; ``scored pairs`` says what fraction was scored.
    """
    counts = [c for c in (4, 6, 8, 12, 16, 24, 32, 64, 128, 256) if c < n_models] + [n_models - 1]
    rows = []
    for norm, run in attacked.runs.items():
        attack_input = AttackInput.from_run(run)
        for count in counts:
            for attack in ("lira_online", "lira_offline"):
                per_target = [attack_scores(attack_input, attack, [t], strict=False,
                                            references=[m for m in range(n_models) if m != t][:count])[0]
                              for t in attacked.targets]
                r = evaluate(np.stack(per_target), run.masks[attacked.targets], n_boot=0)
                rows.append({"norm": norm, "reference models": count, "attack": ATTACK_NAMES[attack],
                             "tpr@0.01": r["tpr@0.01"], "auc": r["auc"],
                             "scored pairs": r["pairs"] / (r["pairs"] + r["unscored"])})
    return pd.DataFrame(rows)


@dataclasses.dataclass
class Vulnerability:
    """Per sample: memorization score and LiRA vulnerability; Spearman rho per norm."""

    table: pd.DataFrame
    rho: dict[str, float]


def vulnerability_link(attacked: Attacked) -> Vulnerability:
    """Each sample's LiRA vulnerability (mean score IN minus OUT over targets) against its
    memorization score in the same run."""
    from scipy import stats

    rows = []
    for norm, run in attacked.runs.items():
        scores, _ = run_memorization(run, n_boot=0)
        vuln = vulnerability(attacked.scores[norm, "lira_online"].numpy(), run.masks[attacked.targets].numpy())
        rows.append(scores.assign(vulnerability=vuln, norm=norm))
    table = pd.concat(rows, ignore_index=True)
    rho = {norm: float(stats.spearmanr(g["mem"], g["vulnerability"], nan_policy="omit").statistic)
           for norm, g in table.groupby("norm")}
    return Vulnerability(table, rho)
