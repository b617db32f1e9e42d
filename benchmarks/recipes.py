"""Recipe search for a recorded setting: every candidate of a YAML list trained on the pool and read on a
validation split of the pool (never the test split), with its cost. Prints a Markdown table for BENCHMARKS.md.

    python benchmarks/recipes.py --dataset imagefolder:data/cifar10-jpeg --candidates benchmarks/recipes.yml
    python benchmarks/recipes.py ... --only 1 3     # candidates 1 and 3 of the list

Each row: validation accuracy and IN accuracy (the fit rule's reading; 0.99 is the fit threshold)
and the clean loss on IN and on OUT samples (eval mode, no label smoothing) of ``--models`` models, each trained on half of the pool (as a shadow model), images/s of that
training and the hours one norm's side of a setting would take (3 seeds x 16 models x budgets E
and 2E) at that rate. The rate is measured at ``--models`` models: the engine trains 16 models
faster per model, so the projection errs long. Run nothing else beside it (timings).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bnprivacy.data import load_dataset  # noqa: E402
from bnprivacy.recipes import check_candidates, trial  # noqa: E402
from bnprivacy.values import read_yaml  # noqa: E402

COLUMNS = ("arch", "width", "norm", "train_size", "epochs", "lr", "agc_clip", "weight_decay", "label_smoothing", "augment",
           "batch_size", "precision")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="e.g. imagefolder:data/cifar10-jpeg or cifar10")
    parser.add_argument("--candidates", type=Path, default=Path(__file__).with_name("recipes.yml"))
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--only", type=int, nargs="*", help="1-based numbers of the candidates to run")
    args = parser.parse_args()
    candidates = read_yaml(args.candidates.read_text(), str(args.candidates))
    configs = check_candidates(candidates, {"dataset": args.dataset, "device": "cpu"})  # all checked before any trains
    chosen = args.only or list(range(1, len(configs) + 1))
    if not set(chosen) <= set(range(1, len(configs) + 1)):
        sys.exit(f"--only {chosen}: the list has candidates 1 to {len(configs)}")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.models} models per candidate")
    print("| # | " + " | ".join(COLUMNS) + " | validation acc | IN acc | clean loss IN / OUT | images/s "
          "| projected h per norm |")
    print("| " + " | ".join(["---"] * (len(COLUMNS) + 6)) + " |")
    data_by_pool = {}
    for number in chosen:
        cfg = configs[number - 1]
        key = (cfg.train_size, cfg.imbalance)
        if key not in data_by_pool:
            data_by_pool[key] = load_dataset(cfg)
        r = trial(cfg, data_by_pool[key], models=args.models)
        values = " | ".join(str(getattr(cfg, c)) for c in COLUMNS)
        print(f"| {number} | {values} | {100 * r['val_acc']:.1f}% | {100 * r['in_acc']:.1f}% "
              f"| {r['in_loss']:.3f} / {r['out_loss']:.3f} | {r['images_per_s']:,.0f} "
              f"| {r['projected_hours']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
