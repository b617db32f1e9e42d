"""Per-sample scores of logits: loss, correctness and LiRA's statistic. Pure functions of logits and
labels, kept apart from the engine that produces the logits (``signals.py``), so that attacks and
memorization estimators import them without the training code.
"""

from __future__ import annotations

import torch


def _label_index(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``labels [S]`` shaped to gather the label's logit from ``logits [..., S, C]``."""
    return labels.view(*([1] * (logits.ndim - 2)), -1, 1).expand(*logits.shape[:-1], 1)


def losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every logit vector ``[..., S, C]`` against ``labels [S]``."""
    true = logits.gather(-1, _label_index(logits, labels)).squeeze(-1)
    return torch.logsumexp(logits, dim=-1) - true


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether the top logit is the label, ``[..., S]`` bool."""
    return logits.argmax(-1) == labels


def lira_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's logit-scaled confidence ``log p_y - log sum_{j != y} p_j`` (stable, in logit space).

    Equal to ``z_y - logsumexp_{j != y} z_j``, which never takes the log of a rounded-off
    probability.
    """
    labels_ = _label_index(logits, labels)
    true = logits.gather(-1, labels_).squeeze(-1)
    others = logits.scatter(-1, labels_, float("-inf"))
    return true - torch.logsumexp(others, dim=-1)
