"""Models Opacus can train with per-sample gradients.

**Why GroupNorm.** DP-SGD clips each sample's gradient, so every sample's gradient must be defined
on its own. BatchNorm in train mode couples the samples of a batch (each output depends on the
batch statistics), and its running statistics are a non-private channel; Opacus refuses it and
``ModuleValidator.fix`` swaps every BatchNorm for a GroupNorm. Opacus's GroupNorm has ``min(32, C)``
groups, ours (``norm="group"``) at least four channels per group, so a BN model "fixed" by Opacus
is a different network from our GroupNorm models. To separate what GroupNorm does from what
DP-SGD does, a DP run trains *our* ``norm="group"`` architecture (:func:`dp_config` swaps it in),
the same network as the non-private GroupNorm baseline; every model still goes through
:func:`make_private_module`, which validates it with Opacus and fixes what Opacus can fix.
"""

from __future__ import annotations

from torch import nn

from ..config import Config

DP_NORMS = ("group", "layer", "none")


class UnsupportedModule(ValueError):
    """A module Opacus cannot train with per-sample gradients, even after ``ModuleValidator.fix``."""


def dp_config(cfg: Config) -> Config:
    """``cfg`` for DP-SGD: BatchNorm replaced by the project's GroupNorm (module docstring)."""
    return cfg.replace(norm="group") if cfg.norm == "batch" else cfg


def make_private_module(module: nn.Module) -> nn.Module:
    """``module`` ready for Opacus: validated, fixed by ``ModuleValidator.fix`` where needed
    (BatchNorm -> GroupNorm, ...), and with in-place activations made out-of-place.

    Raises :class:`UnsupportedModule` naming every submodule Opacus still cannot handle.
    """
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    if ModuleValidator.validate(module, strict=False):
        module = ModuleValidator.fix(module)
    for sub in module.modules():
        # Opacus's backward hooks return views that an in-place ReLU would overwrite.
        if hasattr(sub, "inplace"):
            sub.inplace = False
    problems = [str(e) for e in ModuleValidator.validate(module, strict=False)]
    problems += [str(e) for e in GradSampleModule.validate(module, strict=False)]
    if problems:
        raise UnsupportedModule(
            "Opacus cannot compute per-sample gradients of this model even after "
            f"ModuleValidator.fix: {'; '.join(problems)}. Replace the named module(s) by layers "
            "without buffers (e.g. GroupNorm instead of a custom normalisation) or register a "
            "grad sampler for them (opacus.grad_sample.register_grad_sampler)")
    return module
