"""The family of shadow runs: :class:`Protocol`, what it trains and the checks of its fields."""

from __future__ import annotations

import dataclasses
import math


from ..checks import check_whole
from ..config import NORMS, Config
from ..models import DEFAULT_WIDTH, group_count
from ..runs.spec import RunSpec

@dataclasses.dataclass(frozen=True)
class Protocol:
    """The shared family of shadow runs and the rules that read them (see the module docstring).

    ``base`` fixes everything but the norm, epochs, learning rate and seed. ``budgets`` is the
    increasing epoch ladder, ``lr_grid`` multiplies ``base.lr``, ``seeds`` runs per (norm, budget)
    with their own masks, ``n_models`` shadow models per run, ``equal_epochs`` the budget of the
    paper's equal-epochs setting (default: the first). ``probe_points`` gradient probes per run on
    ``probe_models`` models (0: no probes). ``agc_grid`` lists the AGC thresholds tried for
    ``norm='nf'`` beside each learning rate (empty: ``base.agc_clip`` only). ``widths`` lists
    multipliers of the base width (1 among them): the ladder trains at x1, and every other
    multiplier is trained at the ladder's first budget, so that the frontier settings have points
    that move test accuracy and training loss while they stay fit (a point is a (width, budget)).
    """

    base: Config
    norms: tuple[str, ...] = ("batch", "none")
    budgets: tuple[int, ...] = (20, 28, 40, 56)
    lr_grid: tuple[float, ...] = (0.25, 1.0, 4.0)
    fit_threshold: float = 0.99
    chance_factor: float = 1.5
    seeds: int = 3
    n_models: int = 16
    equal_epochs: int = 0
    validation_fraction: float = 0.2
    probe_points: int = 0
    probe_typical: int = 20
    probe_models: int = 2
    agc_grid: tuple[float, ...] = ()
    widths: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        object.__setattr__(self, "norms", tuple(self.norms))
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "agc_grid", tuple(self.agc_grid))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        object.__setattr__(self, "lr_grid", tuple(self.lr_grid))
        if not self.equal_epochs and self.budgets:
            object.__setattr__(self, "equal_epochs", self.budgets[0])
        check_protocol(self)

    @property
    def reference(self) -> str:
        """The norm a chapter's detail sections set BN against: the first norm of ``norms`` that is
        not ``batch`` (in the book's order, so a batch-independent reference that trains as well as
        BN, ``gn_ws`` or ``nf``, comes before ``none``)."""
        return self.references[0]

    @property
    def references(self) -> tuple[str, ...]:
        """Every norm BN is compared with: the norms of ``norms`` but ``batch``, in order."""
        return tuple(n for n in self.norms if n != "batch")

    def agc_candidates(self, norm: str) -> tuple[float | None, ...]:
        """The AGC thresholds tried for ``norm``: ``agc_grid`` (or ``base.agc_clip``) for ``nf``, which
        clips; ``(None,)`` (the base Config's, unused) for every other norm."""
        if norm != "nf":
            return (None,)
        return self.agc_grid or (float(self.base.agc_clip),)

    @property
    def points(self) -> tuple[tuple[float, int], ...]:
        """Every (width multiplier, budget) the family trains: the ladder at x1, then the width points."""
        return tuple((1.0, budget) for budget in self.budgets) + self.width_points

    @property
    def width_points(self) -> tuple[tuple[float, int], ...]:
        """The (width multiplier, budget) points trained off the ladder: every multiplier but 1, at
        the ladder's first budget."""
        return tuple((m, self.budgets[0]) for m in self.widths if m != 1)

    def scaled_width(self, multiplier: float) -> int:
        """The width of a run at ``multiplier`` times the base width (the architecture's default when
        ``base.width`` is 0), rounded to whole channels."""
        return int(round(multiplier * (self.base.width or DEFAULT_WIDTH[self.base.arch])))

    def config(self, norm: str, budget: int, lr: float, seed: int, agc: float | None = None,
               width: float = 1.0) -> Config:
        """The Config of one run of the family (``agc``: nf's AGC threshold, the base's when None;
        ``width``: a multiplier of the base width)."""
        changes = {} if agc is None else {"agc_clip": agc}
        if width != 1:
            changes["width"] = self.scaled_width(width)
        return self.base.replace(norm=norm, epochs=budget, lr=lr, seed=seed, **changes)

    def spec(self, norm: str, budget: int, lr: float, seed: int, pool_size: int, agc: float | None = None,
             width: float = 1.0) -> RunSpec:
        """The shadow run of (norm, budget, seed) at learning rate ``lr`` (masks seeded by ``seed``),
        for nf at AGC threshold ``agc``, at ``width`` times the base width."""
        every = 0
        if self.probe_points:
            steps = (pool_size // 2) // self.base.batch_size
            every = max(1, steps * budget // self.probe_points)
        # Chapter 01 draws the per-epoch curves of seed 0 only. The other seeds' per-epoch evaluation
        # (16 models x 1,024 test images of a CIFAR run) took 8.5 of an epoch's 27 s on the CPU
        # (BENCHMARKS.md), read by nothing; their last epoch still measures the whole test split.
        return RunSpec(self.config(norm, budget, lr, seed, agc, width), self.n_models, mask_seed=seed, probe_every=every,
                       probe_typical=self.probe_typical, probe_models=self.probe_models,
                       epoch_curves=seed == CURVE_SEED and width == 1)


# The seed whose runs keep per-epoch test curves (chapter 01's "Complete schedules").
CURVE_SEED = 0


def check_protocol(p: Protocol) -> None:
    """Raise ``ValueError`` naming the bad field of a protocol, before anything trains."""
    if not isinstance(p.base, Config):
        raise ValueError(f"base must be a Config, got {type(p.base).__name__}")
    if not p.budgets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in p.budgets):
        raise ValueError(f"budgets={list(p.budgets)!r} is not allowed; allowed values: a non-empty list of "
                         "epoch counts >= 1, e.g. [10, 20, 40]")
    if any(b >= c for b, c in zip(p.budgets, p.budgets[1:])):
        raise ValueError(f"budgets={list(p.budgets)!r} must be strictly increasing, e.g. [10, 20, 40]")
    if not p.lr_grid or any(isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m)
                            or m <= 0 for m in p.lr_grid):
        raise ValueError(f"lr_grid={list(p.lr_grid)!r} is not allowed; allowed values: a non-empty list of "
                         "finite multipliers > 0 of the base learning rate, e.g. [0.25, 1, 4]")
    if isinstance(p.fit_threshold, bool) or not isinstance(p.fit_threshold, (int, float)) \
            or not 0 < p.fit_threshold <= 1:
        raise ValueError(f"fit_threshold={p.fit_threshold!r} is not allowed; allowed values: a number in "
                         "(0, 1], e.g. 0.99")
    unknown = [n for n in p.norms if n not in NORMS]
    if unknown:
        raise ValueError(f"norms {unknown} are not allowed; allowed values: {', '.join(NORMS)}")
    if "batch" not in p.norms or len(set(p.norms)) < 2:
        raise ValueError(f"norms={list(p.norms)!r} must hold 'batch' and at least one reference to compare "
                         "it with, e.g. ['batch', 'none']")
    check_whole("seeds", p.seeds)
    check_whole("n_models", p.n_models)
    if p.n_models % 2:
        raise ValueError(f"n_models={p.n_models} must be even (every sample IN for exactly half the models)")
    if p.equal_epochs not in p.budgets:
        raise ValueError(f"equal_epochs={p.equal_epochs!r} must be one of the budgets {list(p.budgets)}")
    if not 0 < p.validation_fraction < 1:
        raise ValueError(f"validation_fraction={p.validation_fraction!r} is not allowed; allowed values: "
                         "a number in (0, 1)")
    if not p.chance_factor >= 1:
        raise ValueError(f"chance_factor={p.chance_factor!r} is not allowed; allowed values: a number >= 1")
    for name in ("probe_points", "probe_typical"):
        check_whole(name, getattr(p, name), least=0)
    check_whole("probe_models", p.probe_models)
    if p.probe_models > p.n_models:
        raise ValueError(f"probe_models={p.probe_models} is more than the n_models={p.n_models} models of a run; "
                         "allowed values: 1 ... n_models")
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0
           for a in p.agc_grid):
        raise ValueError(f"agc_grid={list(p.agc_grid)!r} is not allowed; allowed values: a list of finite AGC "
                         "thresholds > 0 (the largest ratio of a unit's gradient norm to its weight norm), e.g. "
                         "[0.02, 0.04], or [] for the base Config's agc_clip")
    check_widths(p)
    for norm in p.norms:  # every Config of the family is valid before anything trains
        for budget in p.budgets:
            for agc in p.agc_candidates(norm):
                for width in p.widths:
                    p.config(norm, budget, p.base.lr * max(p.lr_grid), 0, agc, width)


def check_widths(p: Protocol) -> None:
    """Refuse a width grid without 1 (the ladder's width), with a multiplier that is not a finite
    number > 0, or one that leaves a normalisation group of some norm without a channel."""
    widths = list(p.widths)
    if any(isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0 for m in widths) \
            or 1 not in widths or len(set(widths)) < len(widths):
        raise ValueError(f"widths={widths!r} is not allowed; allowed values: distinct finite multipliers > 0 of the "
                         "base width, 1 among them (the ladder's width), e.g. [0.5, 1, 2]")
    for m in widths:
        channels = p.scaled_width(m)
        for norm in p.norms:
            groups = _groups(norm, max(channels, 1))
            if channels < groups:
                raise ValueError(f"widths: x{m:g} gives width {channels}, fewer than one channel per group of "
                                 f"{norm} ({groups} groups); use a larger multiplier")


def _groups(norm: str, channels: int) -> int:
    """The groups a norm layer of the narrowest layer (``channels`` channels) splits into."""
    return group_count(channels) if norm in ("group", "gn_ws") else 1
