"""The loss a cohort's clients train on: each client's mean cross-entropy over the
real examples of its padded batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._types import Params

if TYPE_CHECKING:
    from ._functional import FunctionalModel

__all__ = ["cross_entropy", "masked_loss", "masked_mean"]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each example's cross-entropy: ``F.cross_entropy(logits, y,
    reduction="none")`` bit for bit (the label's entry of ``log_softmax``, negated),
    without its handling of ``ignore_index`` (a label out of range is an error),
    which under ``vmap`` costs a dozen more small operations a step, each a kernel
    launch on a GPU (13 of the 76 of a 2NN step, whose eager form runs 1.04-1.06x
    faster without them: ``benchmarks/cohort_loss.py``)."""
    log_probs = torch.log_softmax(logits, dim=1)
    return -log_probs.gather(1, y.unsqueeze(1)).squeeze(1)


def masked_mean(per_example: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``per_example`` over the entries ``mask`` marks (0 without any),
    along the last axis: a client's loss from its padded batch."""
    weights = mask.to(per_example.dtype)
    return (per_example * weights).sum(dim=-1) / weights.sum(dim=-1).clamp(min=1)


def masked_loss(model: FunctionalModel) -> Any:
    """A client's loss ``loss(params, x, y, mask)`` on its padded batch."""

    def loss(
        params: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return masked_mean(cross_entropy(model.apply(params, x), y), mask)

    return loss
