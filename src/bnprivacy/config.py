"""The experiment Config: one frozen, validated, hashable description of a training setting.

Every result on disk is keyed by ``Config.key()``, so two runs with the same Config share their
cache and a changed parameter never silently reuses an old result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path

from .imagefolder import imagefolder_fingerprint

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
IMAGEFOLDER_PREFIX = "imagefolder:"
ARCHS = ("mlp", "cnn", "resnet18", "vgg11", "densenet", "airbench")
NORMS = ("batch", "group", "layer", "gn_ws", "nf", "none")


def norm_order(present) -> list[str]:
    """The norms present, in the book's fixed order (:data:`NORMS`: batch first, none last)."""
    present = set(present)
    return [n for n in NORMS if n in present] + sorted(present - set(NORMS))
AUGMENTS = ("auto", "none", "flip-crop")
SCHEDULES = ("cosine", "onecycle", "constant")
DEVICES = ("auto", "cpu", "cuda")
CANARY_KINDS = ("noise", "mislabeled", "ood", "atypical")
PRECISIONS = ("auto", "fp32", "bf16")

# Upper bounds of sizes a user passes, checked before any work, each with its reason: a typo of a
# few digits must be one line naming the parameter, not an allocator error or the OOM killer.
# The architectures are built for images of 28-64 px (CIFAR's 32); at 512 px one colour image
# already takes 3 MiB as floats, so a 50,000-image split needs 150 GiB.
MAX_IMAGE_SIZE = 512
# A canary is an outlier: a few per cent of a pool. 50,000 (CIFAR-10's whole training split) per kind,
# and as many reference candidates, is far above any experiment of the book.
MAX_CANARIES_PER_KIND = 50_000
MAX_CANARY_REFERENCES = 50_000

# Bumped when a change of the code changes what a Config trains to, so old cached results are not
# mistaken for new ones. 3: the stop-at-target-accuracy mode (``target_accuracy``, ``max_epochs``)
# is gone and a stored result no longer records whether a target was reached.
RESULTS_VERSION = 3

# Fields removed from Config; ``Config.from_dict`` says why when one is passed.
_REMOVED = ("target_accuracy", "max_epochs")
_REMOVED_WHY = ("The stop-at-target-accuracy mode (target_accuracy, max_epochs) was removed because "
                "it compared mid-schedule snapshots (learning rate still high, training set not yet "
                "fit); use complete trainings at several epoch budgets (bnprivacy.protocol) instead.")

# Fields that say where a run executes, not what it computes: left out of the cache key so that a
# run trained on a GPU is found again on a laptop.
_NOT_IN_KEY = ("device",)
# The fields load_dataset reads: two configs that agree on them load the same pool and test split.
DATA_FIELDS = ("dataset", "train_size", "imbalance", "image_size", "seed", "canaries", "canary_references",
               "canary_seed")
# Fields added after runs were first stored, with the value that computes what the code computed
# before them: at that value they stay out of the cache key, so every earlier run keeps its key.
_IN_KEY_ONLY_WHEN_SET = {"imbalance": 1.0}
# Fields that change what is computed only under some norms: out of the key under the others, so
# that a BN run is one run whatever AGC threshold its Config carries.
_IN_KEY_ONLY_WITH_NORM = {"agc_clip": ("nf",)}


@dataclasses.dataclass(frozen=True)
class Config:
    """What to train: dataset, architecture, normalisation layer and optimisation recipe.

    ``width=0`` takes the architecture's default width (see ``models.DEFAULT_WIDTH``). Every model
    trains exactly ``epochs`` epochs, with the learning-rate schedule laid over them.
    ``train_size=0`` uses the whole training split; ``imbalance > 1`` makes the pool long-tailed
    (``longtail.long_tail_pool``: class 0 ``imbalance`` times as frequent as the last). ``canaries`` injects outliers
    into the training pool, e.g. ``"noise:10,mislabeled:10"`` (see ``canaries.py``), with
    ``canary_references`` never-trained reference candidates per kind for exposure.
    """

    dataset: str = "digits"
    arch: str = "cnn"
    norm: str = "batch"
    width: int = 0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    augment: str = "auto"
    train_size: int = 0
    imbalance: float = 1.0
    image_size: int = 0
    canaries: str = ""
    canary_references: int = 0
    canary_seed: int = 0
    agc_clip: float = 0.04
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Stable 16-hex-digit cache key of every field that changes what is computed, and of the
        content of an ``imagefolder:`` dataset's images (:func:`imagefolder.imagefolder_fingerprint`)."""
        fields = {k: v for k, v in self.to_dict().items()
                  if k not in _NOT_IN_KEY and not (k in _IN_KEY_ONLY_WHEN_SET and v == _IN_KEY_ONLY_WHEN_SET[k])
                  and not (k in _IN_KEY_ONLY_WITH_NORM and self.norm not in _IN_KEY_ONLY_WITH_NORM[k])}
        if "agc_clip" in fields:
            fields["agc_clip"] = float(fields["agc_clip"])  # 1 and 1.0 are one threshold
        if "imbalance" in fields:
            fields["imbalance"] = float(fields["imbalance"])  # 10 and 10.0 are one pool
        fields["results_version"] = RESULTS_VERSION
        if self.dataset.startswith(IMAGEFOLDER_PREFIX):
            fields["images"] = imagefolder_fingerprint(self.dataset[len(IMAGEFOLDER_PREFIX):])
        blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def data_key(self) -> str:
        """Stable 16-hex-digit key of the fields that decide the data ``load_dataset`` returns (the
        pool drawn, its canaries and the image folder's content), whatever the training recipe."""
        fields = {k: v for k, v in self.to_dict().items() if k in DATA_FIELDS}
        fields["imbalance"] = float(fields["imbalance"])
        if self.dataset.startswith(IMAGEFOLDER_PREFIX):
            fields["images"] = imagefolder_fingerprint(self.dataset[len(IMAGEFOLDER_PREFIX):])
        blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """Build a Config from a dict, naming any key that is not a Config field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            why = f" {_REMOVED_WHY}" if set(unknown) & set(_REMOVED) else ""
            raise ValueError(
                f"unknown Config parameter(s) {unknown}; allowed parameters: {sorted(known)}.{why}"
            )
        return cls(**values)


def _fail(name: str, value, allowed: str) -> None:
    raise ValueError(f"Config.{name}={value!r} is not allowed; allowed values: {allowed}")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        _fail(name, value, ", ".join(repr(c) for c in choices))


def _check_number(name: str, value, *, kind, low, high=None, low_open=False, high_open=False,
                  why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        _fail(name, value, f"a number of type {kind.__name__ if isinstance(kind, type) else 'float'}")
    if not math.isfinite(value):
        _fail(name, value, "a finite number")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        _fail(name, value, f"{lo}{low}, {high if high is not None else 'inf'}{hi}" + (f" ({why})" if why else ""))


def _validate(cfg: Config) -> None:
    _check_dataset(cfg.dataset)
    _check_choice("arch", cfg.arch, ARCHS)
    _check_choice("norm", cfg.norm, NORMS)
    _check_choice("schedule", cfg.schedule, SCHEDULES)
    _check_choice("augment", cfg.augment, AUGMENTS)
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("precision", cfg.precision, PRECISIONS)
    real = (int, float)
    _check_number("width", cfg.width, kind=int, low=0)
    _check_number("epochs", cfg.epochs, kind=int, low=1)
    _check_number("batch_size", cfg.batch_size, kind=int, low=1)
    _check_number("lr", cfg.lr, kind=real, low=0, low_open=True)
    _check_number("momentum", cfg.momentum, kind=real, low=0, high=1, high_open=True)
    _check_number("weight_decay", cfg.weight_decay, kind=real, low=0)
    _check_number("label_smoothing", cfg.label_smoothing, kind=real, low=0, high=1, high_open=True)
    _check_number("train_size", cfg.train_size, kind=int, low=0)
    _check_number("image_size", cfg.image_size, kind=int, low=0, high=MAX_IMAGE_SIZE,
                  why="0 keeps the images' own size; the networks are built for 28-64 px images")
    _check_number("imbalance", cfg.imbalance, kind=real, low=1)
    _check_number("seed", cfg.seed, kind=int, low=0)
    _check_number("canary_references", cfg.canary_references, kind=int, low=0, high=MAX_CANARY_REFERENCES,
                  why="reference candidates per canary kind")
    _check_number("canary_seed", cfg.canary_seed, kind=int, low=0)
    _check_number("agc_clip", cfg.agc_clip, kind=real, low=0, low_open=True,
                  why="the largest ratio of a unit's gradient norm to its weight norm that AGC lets through")
    parse_canaries(cfg.canaries)
    if cfg.norm == "batch" and cfg.batch_size < 2:
        _fail("batch_size", cfg.batch_size, "an integer >= 2 with norm='batch' (BatchNorm needs "
              "at least two samples per batch for its statistics)")


def _check_dataset(dataset) -> None:
    if not isinstance(dataset, str):
        _fail("dataset", dataset, _dataset_help())
    if dataset.startswith(IMAGEFOLDER_PREFIX):
        if not dataset[len(IMAGEFOLDER_PREFIX):].strip():
            raise ValueError(f"Config.dataset={dataset!r} names no folder; pass the folder of the images as "
                             "'imagefolder:ROOT', with ROOT/train/<class>/ and ROOT/test/<class>/")
        root = Path(dataset[len(IMAGEFOLDER_PREFIX):]).expanduser()
        if not root.is_dir():
            raise ValueError(
                f"Config.dataset={dataset!r}: folder {str(root)!r} does not exist. An imagefolder "
                "dataset is a folder ROOT with ROOT/train/<class>/*.png|jpg and "
                "ROOT/test/<class>/*.png|jpg; pass it as 'imagefolder:ROOT'."
            )
        return
    _check_choice("dataset", dataset, DATASETS + ("imagefolder:ROOT",))


def _dataset_help() -> str:
    return ", ".join(repr(d) for d in DATASETS) + ", 'imagefolder:ROOT'"


def parse_canaries(spec) -> dict[str, int]:
    """``"noise:10,mislabeled:5"`` -> ``{"noise": 10, "mislabeled": 5}``; ``""`` -> ``{}``."""
    if not isinstance(spec, str):
        _fail("canaries", spec, "a string like 'noise:10,mislabeled:10' (kinds: "
              + ", ".join(CANARY_KINDS) + ")")
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, count = part.partition(":")
        kind = kind.strip()
        if kind not in CANARY_KINDS:
            raise ValueError(f"Config.canaries={spec!r}: canary kind {kind!r} is not allowed; "
                             f"allowed values: {', '.join(CANARY_KINDS)}")
        # ASCII digits only: str.isdigit() accepts "²", which int() then refuses unnamed.
        if not re.fullmatch(r"[0-9]+", count.strip()) or int(count) < 1 or kind in counts:
            raise ValueError(f"Config.canaries={spec!r}: {part!r} must be KIND:COUNT with a "
                             "positive count in digits 0-9, each kind once, e.g. 'noise:10,mislabeled:10'")
        if int(count) > MAX_CANARIES_PER_KIND:
            raise ValueError(f"Config.canaries={spec!r}: {part!r} asks for more than {MAX_CANARIES_PER_KIND:,} "
                             "canaries of one kind; a canary is an outlier, a few per cent of the pool: "
                             "use a smaller count")
        counts[kind] = int(count)
    return counts
