"""What a shadow run is: its models, masks and recipe, its cache key and its folder.

Every kind of run (``RunSpec`` here, ``privacy.training.DPRunSpec`` for DP-SGD) offers the
:class:`ShadowSpec` interface, which is all that the executors, chunks and loading use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Protocol

import torch

from ..checks import check_whole
from ..config import Config
from ..ensemble import EnsembleResult, ProbeSpec, balanced_masks, fraction_masks, train_ensemble
from .disk import results_folder


class ShadowSpec(Protocol):
    """A shadow run as the executors see it: ``n_models`` models of ``config``, each trained on
    its row of :meth:`masks`, stored under :meth:`key`."""

    config: Config
    n_models: int

    def to_dict(self) -> dict:
        """Everything that changes what is trained (written to the run's ``spec.json``)."""

    def key(self) -> str:
        """The run's cache key (:func:`spec_key` of :meth:`to_dict`)."""

    def masks(self, pool_size: int) -> torch.Tensor:
        """Inclusion masks ``[n_models, pool_size]`` (bool)."""

    def train(self, data, masks: torch.Tensor, models: list[int], *, strategy: str = "batched",
              progress: bool = False) -> EnsembleResult:
        """Train the models ``models`` (their states, history and any tables to store)."""


MASK_KINDS = ("balanced", "fraction")


def spec_key(described: dict, config: Config) -> str:
    """Cache key of a run described by ``described`` (its Config replaced by the Config's key)."""
    blob = json.dumps({**described, "config": config.key()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A shadow run: ``n_models`` models of ``config``, each on its inclusion mask of the pool.

    ``mask="balanced"`` puts every pool sample IN for exactly half of the models (LiRA; needs an
    even ``n_models``); ``mask="fraction"`` gives each model a random ``fraction`` of the pool
    (Feldman & Zhang). The pool is the training split of ``config.dataset``. ``epoch_curves=False``
    measures test accuracy only after the last epoch (see ``ensemble.train_ensemble``): the models
    are the same, so it is not part of the run's key.
    """

    config: Config
    n_models: int
    mask: str = "balanced"
    fraction: float = 0.5
    mask_seed: int = 0
    probe_every: int = 0
    probe_typical: int = 20
    probe_models: int = 2
    epoch_curves: bool = True

    def __post_init__(self):
        check_whole("n_models", self.n_models)
        if self.mask not in MASK_KINDS:
            raise ValueError(f"mask={self.mask!r} is not allowed; allowed values: {', '.join(MASK_KINDS)}")
        if self.mask == "balanced" and self.n_models % 2:
            raise ValueError(f"mask='balanced' needs an even n_models, got {self.n_models}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction={self.fraction!r} is not allowed; allowed values: a number in (0, 1)")
        if self.probe_every < 0:
            raise ValueError(f"probe_every={self.probe_every!r} is not allowed; allowed values: 0 (off) "
                             "or a number of steps >= 1")
        self.probe()

    def to_dict(self) -> dict:
        described = {"config": self.config.to_dict(), "n_models": self.n_models, "mask": self.mask,
                     "fraction": self.fraction if self.mask == "fraction" else None,
                     "mask_seed": self.mask_seed}
        if self.probe_every:  # runs without probes keep the keys they had before probes existed
            described.update(probe_every=self.probe_every, probe_typical=self.probe_typical,
                             probe_models=self.probe_models)
        return described

    def probe(self):
        """The gradient probes of this run (``ensemble.ProbeSpec``), or None."""
        if not self.probe_every:
            return None
        return ProbeSpec(self.probe_every, self.probe_typical, self.probe_models, self.mask_seed)

    def key(self) -> str:
        """The run's cache key."""
        return spec_key(self.to_dict(), self.config)

    def train(self, data, masks, models: list[int], *, strategy: str = "batched", progress: bool = False):
        """Train the models ``models`` of this run (an ``ensemble.EnsembleResult``)."""
        return train_ensemble(self.config, data, masks, models, strategy=strategy, progress=progress,
                              probe=self.probe(), epoch_curves=self.epoch_curves)

    def masks(self, pool_size: int):
        """Inclusion masks ``[n_models, pool_size]`` of this run's mask kind."""
        if self.mask == "balanced":
            return balanced_masks(self.n_models, pool_size, self.mask_seed)
        return fraction_masks(self.n_models, pool_size, self.fraction, self.mask_seed)


def run_folder(spec: "ShadowSpec") -> Path:
    """Where the run ``spec`` is stored: ``results/runs/<key>``."""
    return results_folder("runs") / spec.key()
