"""The masked, weighted distillation loss and the validation metrics.

Predictions are per latent, `[B, N, K, D]`; targets are per frame or per latent,
`[B, P, K, D]`, with `positions[b, p]` the latent that target row p is compared with and
`mask[b, p]` false on padding. An example's loss is the mean of the element loss over its
valid rows, so it does not depend on what it is batched with; the batch loss is the
weighted mean of the example losses (docs/adapter.md has worked examples).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import LOSSES

METRICS = ("val_l1", "val_mse", "val_cos")


def aligned_predictions(pred: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The prediction each target row is compared with: `[B, P, K, D]`."""
    # One index_select over the flattened (batch, latent) rows, not pred[rows, positions]:
    # the same values, but its backward is index_add_ instead of index_put_(accumulate),
    # which is serial on the CPU (docs/performance.md has the figures).
    batch, n_lat = pred.shape[:2]
    rows = torch.arange(batch, device=pred.device).unsqueeze(1) * n_lat + positions
    flat = pred.reshape(batch * n_lat, *pred.shape[2:]).index_select(0, rows.reshape(-1))
    return flat.view(*positions.shape, *pred.shape[2:])


def element_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Element loss averaged over tokens and channels: `[B, P]`."""
    per_row = pred.shape[-2] * pred.shape[-1]
    # L1 and MSE as vector norms: one pass over the [B, P, K, D] difference forward and two
    # backward, where abs()/square() then mean() take three each way.
    if kind == "l1":
        return torch.linalg.vector_norm(pred - target, ord=1, dim=(-2, -1)) / per_row
    if kind == "mse":
        return torch.linalg.vector_norm(pred - target, ord=2, dim=(-2, -1)).square() / per_row
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none").mean(dim=(-2, -1))
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")


def example_means(per_row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each example's valid rows: `[B, P]` -> `[B]`."""
    valid = mask.to(per_row.dtype)
    return (per_row * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`sum_i w_i v_i / sum_i w_i`; zero when every weight is zero."""
    return (values * weights).sum() / weights.sum().clamp(min=torch.finfo(values.dtype).tiny)


def row_coefficients(mask: torch.Tensor, weights: torch.Tensor, per_row: int) -> torch.Tensor:
    """`c[b, p]` with loss = sum over (b, p) of c[b, p] * (element loss summed over row p of b).

    The weighted mean of per-example means of per-row means, folded into one factor per row:
    `w_b / sum(w) * mask[b, p] / valid rows of b / (K * D)`; zero on padding.
    """
    valid = mask.to(torch.float32)
    weights = weights.to(torch.float32)
    share = weights / weights.sum().clamp(min=torch.finfo(torch.float32).tiny)
    return valid * (share / valid.sum(dim=1).clamp(min=1.0)).unsqueeze(1) / per_row


class FusedRowLoss(torch.autograd.Function):
    """L1 or MSE of predictions gathered per target row, forward and backward by hand.

    Autograd's version keeps several [B, P, K, D] tensors (gathered predictions, difference,
    the norm's input, and three more in backward). Here rows are gathered and differenced a
    slice at a time; L1 keeps only each difference's sign (int8), MSE the difference; the
    gradient is made in the same slices and added straight into the predictions' gradient.
    What it saves is in docs/performance.md.
    """

    SLICES = 8

    @staticmethod
    def forward(ctx, pred, targets, rows, coef, kind):
        flat = pred.reshape(-1, *pred.shape[2:])
        rows, coef = rows.reshape(-1), coef.reshape(-1)
        targets = targets.reshape(rows.numel(), *targets.shape[2:])
        kept = torch.empty(targets.shape, dtype=torch.int8 if kind == "l1" else torch.float32,
                           device=flat.device)
        per_row = torch.empty(rows.numel(), device=flat.device)
        for part in row_slices(rows.numel(), FusedRowLoss.SLICES):
            diff = flat.index_select(0, rows[part]).sub_(targets[part])
            if kind == "l1":
                per_row[part] = torch.linalg.vector_norm(diff, ord=1, dim=(-2, -1))
                kept[part] = diff.sign_()
            else:
                per_row[part] = torch.linalg.vector_norm(diff, ord=2, dim=(-2, -1)).square()
                kept[part] = diff
        ctx.save_for_backward(kept, rows, coef)
        ctx.kind, ctx.pred_shape = kind, pred.shape
        return (per_row * coef).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        kept, rows, coef = ctx.saved_tensors  # sign(d) for L1, d for MSE
        scale = coef * (grad_loss if ctx.kind == "l1" else 2 * grad_loss)
        batch, n_lat = ctx.pred_shape[:2]
        grad = torch.zeros(batch * n_lat, *kept.shape[1:], dtype=scale.dtype, device=scale.device)
        for part in row_slices(rows.numel(), FusedRowLoss.SLICES):
            slope = kept[part].to(scale.dtype).mul_(scale[part].view(-1, 1, 1))
            grad.index_add_(0, rows[part], slope)
        return grad.view(ctx.pred_shape), None, None, None, None


def row_slices(n: int, count: int) -> list[slice]:
    size = max(1, -(-n // count))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def masked_loss(
    pred: torch.Tensor,
    targets: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    kind: str = "l1",
) -> torch.Tensor:
    if kind in ("l1", "mse"):
        batch, n_lat = pred.shape[:2]
        rows = torch.arange(batch, device=pred.device).unsqueeze(1) * n_lat + positions
        coef = row_coefficients(mask, weights, pred.shape[-2] * pred.shape[-1])
        return FusedRowLoss.apply(pred.float(), targets.float(), rows, coef, kind)
    return reference_masked_loss(pred, targets, positions, mask, weights, kind)


def reference_masked_loss(pred, targets, positions, mask, weights, kind: str = "l1") -> torch.Tensor:
    """The loss as its definition reads, with autograd's backward (the fused one's check)."""
    aligned = aligned_predictions(pred.float(), positions)
    per_example = example_means(element_loss(aligned, targets.float(), kind), mask)
    return weighted_mean(per_example, weights)


@dataclass
class MetricSums:
    """Running weighted sums of the per-example validation metrics over a whole split."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))
    weight: float = 0.0

    @torch.no_grad()
    def add(self, pred, targets, positions, mask, weights) -> None:
        aligned = aligned_predictions(pred.float(), positions)
        targets = targets.float()
        per_example = {
            "val_l1": example_means(element_loss(aligned, targets, "l1"), mask),
            "val_mse": example_means(element_loss(aligned, targets, "mse"), mask),
            "val_cos": example_means(
                F.cosine_similarity(aligned, targets, dim=-1).mean(dim=-1), mask
            ),
        }
        weights = weights.float()
        for name, values in per_example.items():
            self.sums[name] += float((values * weights).sum())
        self.weight += float(weights.sum())

    def means(self) -> dict[str, float]:
        if self.weight <= 0:
            return {name: float("nan") for name in METRICS}
        return {name: total / self.weight for name, total in self.sums.items()}
