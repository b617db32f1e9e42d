"""The family parameters: the one declaration of the settings that name the shadow runs chapters 01-04 share.

Each field of :class:`FamilyParameters` is one parameter, with its default (the ``quick`` profile,
the value in the chapters' parameters cells) and its meaning (the cells' inline comment).
Papermill needs every chapter to keep a literal parameters cell, so the cells restate these
names, values and meanings; ``tests/test_family_parameters.py`` fails when one of them, or a
profile of ``book/profiles.yml``, drifts from this class. ``python -m bnprivacy family`` reads its
defaults from here.

This module imports nothing that trains, plots or stores, so anything may import it.
"""

from __future__ import annotations

import dataclasses


def _parameter(default, meaning: str):
    """A field with ``default`` and its ``meaning`` (``metadata["help"]``); a list default is
    copied for each instance, so no caller can change another's (or the class's) default."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": meaning})
    return dataclasses.field(default=default, metadata={"help": meaning})


@dataclasses.dataclass(frozen=True)
class FamilyParameters:
    """The parameters that define the family of shadow runs of chapters 01-04, in the order
    :func:`bnprivacy.analysis.sweep.family` has always taken them."""

    dataset: str = _parameter("digits", "digits | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder:ROOT")
    arch: str = _parameter("cnn", "mlp | cnn | resnet18 | vgg11 | densenet | airbench")
    width: int = _parameter(16, "channels of the first layer, 0 for the default of the architecture")
    widths: list[float] = _parameter([0.5, 1.0], "multipliers of width; each but 1 is trained at the first budget, for the frontiers")
    train_size: int = _parameter(0, "pool size (a random subsample of the training split), 0 for all of it")
    imbalance: float = _parameter(1.0, "long-tailed pool: the most frequent class this many times the rarest (10-50 in the literature), 1.0 as drawn")
    norms: list[str] = _parameter(["batch", "gn_ws", "nf", "none"],
                                  "normalisation layers: batch and at least one reference (batch group layer gn_ws nf none)")
    canaries: str = _parameter("noise:10,mislabeled:10,ood:10,atypical:10",
                               "outliers injected into the pool (chapter 2)")
    canary_references: int = _parameter(63, "never-trained reference candidates per canary kind (exposure)")
    n_models: int = _parameter(16, "shadow models per run, even (each pool sample IN for half of them)")
    seeds: int = _parameter(3, "runs per (norm, budget), each with its own masks and initialisations")
    budgets: list[int] = _parameter([20, 28, 40], "epoch ladder, increasing, roughly geometric; "
                                                      "each budget a complete cosine schedule")
    equal_epochs: int = _parameter(20, "budget of the paper's equal-epochs comparison, one of the budgets")
    lr: float = _parameter(0.05, "base peak learning rate (SGD, Nesterov momentum 0.9, cosine schedule)")
    lr_grid: list[float] = _parameter([0.25, 1.0, 4.0, 16.0], "multipliers of lr tried per norm on the validation split")
    agc_grid: list[float] = _parameter([0.02, 0.04], "AGC thresholds tried for nf beside each lr, [] for agc_clip 0.04")
    fit_threshold: float = _parameter(0.99, "a model has fit when its accuracy on its IN samples reaches this")
    batch_size: int = _parameter(64, "training batch size")
    weight_decay: float = _parameter(5e-4, "L2 penalty on weights (not on norm gains or biases)")
    label_smoothing: float = _parameter(0.0, "label smoothing of the training loss, 0.0 for none")
    augment: str = _parameter("auto", "auto | none | flip-crop (auto: flip-crop on natural images, none on digits)")
    probe_points: int = _parameter(8, "gradient probes per run (chapter 3); part of the runs' identity")
    probe_typical: int = _parameter(20, "typical samples probed beside the canaries")
    probe_models: int = _parameter(1, "models of each run whose gradients are probed")
    precision: str = _parameter("auto", "auto | fp32 | bf16 (bf16: CUDA, or a CPU with native bf16)")
    device: str = _parameter("cpu", "auto | cpu | cuda")


# The names a chapter passes to ``sweep.family``, in the order of the fields above.
FAMILY_PARAMETERS = tuple(field.name for field in dataclasses.fields(FamilyParameters))


def defaults() -> dict:
    """Every family parameter's default, by name (a fresh dict with fresh lists on each call)."""
    return dataclasses.asdict(FamilyParameters())


def help_text(name: str) -> str:
    """The meaning of the family parameter ``name`` (the chapters' inline comment for it)."""
    for field in dataclasses.fields(FamilyParameters):
        if field.name == name:
            return field.metadata["help"]
    raise ValueError(f"{name!r} is not a family parameter; allowed names: {', '.join(FAMILY_PARAMETERS)}")
