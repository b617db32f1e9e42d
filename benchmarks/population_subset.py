"""RMIA with the whole test split as its population against the fixed subset the signals query
(``runs.chunks.POPULATION_SAMPLES``), on finished shadow runs of the results store.

    python benchmarks/population_subset.py 8e706f77a4a28a5a eefede6d894650d0   # run keys (results/runs/)

For each run: the logits of its models on the whole test split (read from a signal file that
covers it, else computed from the kept weights, eval mode, 2 views), then offline and online RMIA
against every model as target, once with all test samples as population and once with the subset.
Prints AUC with its bootstrap interval and TPR at 1% FPR for both, and the time of each query.
A measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnprivacy.attacks import AttackInput, attack_scores, evaluate  # noqa: E402
from bnprivacy.config import Config  # noqa: E402
from bnprivacy.data import load_dataset  # noqa: E402
from bnprivacy.runs.chunks import population_index, sealed_chunks  # noqa: E402
from bnprivacy.runs.disk import load_torch, results_folder  # noqa: E402
from bnprivacy.signals import collect_logits  # noqa: E402
from timing import timed  # noqa: E402


def whole_split_logits(cfg: Config, data, chunk: Path) -> torch.Tensor:
    """``[n, 2, T, K]`` eval-mode logits of the chunk's models on the whole test split."""
    full = chunk / "signals-eval-q2.pt"
    if full.is_file():
        test = load_torch(full)["test"]
        if test.shape[2] == len(data.y_test):
            return test
    states = load_torch(chunk / "states.pt")
    ordered = [states[k] for k in sorted(states, key=int)]
    return collect_logits(cfg, data, ordered, data.x_test, queries=2, mode="eval")


def compare_populations(run: Path, data_seed: int) -> None:
    cfg = Config.from_dict(json.loads((run / "spec.json").read_text())["config"])
    data = load_dataset(cfg.replace(seed=data_seed))  # the pool the family drew, not one drawn with the run's seed
    masks = load_torch(run / "masks.pt")
    chunks = sealed_chunks(run)
    pool = torch.cat([load_torch(next(c.glob("signals-eval-q2*.pt")))["pool"] for c in chunks])
    test = torch.cat([whole_split_logits(cfg, data, c) for c in chunks])
    index = population_index(len(data.y_test))
    populations = {f"all {len(data.y_test)}": (test, data.y_test),
                   f"subset {len(index)}": (test[:, :, index], data.y_test[index])}
    for label, (logits, labels) in populations.items():
        inputs = AttackInput(pool, data.y_train, masks, logits, labels)
        for attack in ("rmia", "rmia_online"):
            result = evaluate(attack_scores(inputs, attack, range(len(masks))), masks, n_boot=50)
            print(f"{run.name}  {label:12s} {attack:12s} AUC {result['auc']:.4f} "
                  f"[{result['auc_lo']:.4f}, {result['auc_hi']:.4f}]  TPR@1% {result['tpr@0.01']:.4f}", flush=True)
    seconds = {name: timed(lambda x=x: collect_logits(cfg, data, [load_torch(chunks[0] / "states.pt")["0"]], x,
                                                        queries=2, mode="eval"))
               for name, x in (("whole split", data.x_test), ("subset", data.x_test[index]))}
    print(f"{run.name}  one model's query: whole split {seconds['whole split']:.1f} s, "
          f"subset {seconds['subset']:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run keys: folder names under results/runs/")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="the seed the run's pool was drawn with: a family draws one pool with its base "
                             "config's seed (0) for every run, whatever the run's own seed")
    args = parser.parse_args()
    for key in args.runs:
        folder = results_folder("runs") / key
        if not (folder / "spec.json").is_file():
            raise SystemExit(f"{folder} is not a shadow run (no spec.json): give the key of a finished run "
                             "under results/runs/")
        compare_populations(folder, args.data_seed)


if __name__ == "__main__":
    main()
