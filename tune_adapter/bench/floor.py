"""The floor `bench` holds a training step to: the step's matrix products alone (same
shapes, same precision, the run's own weights and inputs), timed between its steps."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..adapter import AdapterDims


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """Seconds, once the device has finished what was queued (CUDA runs asynchronously)."""
    synchronize(device)
    return time.perf_counter()


@dataclass(frozen=True)
class Product:
    """`a @ b` as one of the step's products: shapes of a and b."""

    a: tuple[int, int]
    b: tuple[int, int]


def step_products(dims: AdapterDims, batch: int, n_latter: int) -> list[Product]:
    """Every matrix product of one training step: forward, weight and input gradients.

    The adapter's inputs need no gradient, so proj1 and proj1_vf have none for them.
    """
    frame = dims.layers * dims.channels
    first_rows = batch
    latter_rows = batch * n_latter
    rows = first_rows + latter_rows
    inter, out = dims.intermediate_dim, dims.context_tokens * dims.output_dim
    layers = [(first_rows, dims.first_width * frame, inter, False),
              (latter_rows, dims.latter_width * frame, inter, False),
              (rows, inter, inter, True), (rows, inter, out, True)]
    products = []
    for n, k, m, input_grad in layers:
        products.append(Product((n, k), (k, m)))  # forward: x @ W^T
        products.append(Product((m, n), (n, k)))  # weight gradient: dy^T @ x
        if input_grad:
            products.append(Product((n, m), (m, k)))  # input gradient: dy @ W
    return products


# For each product of `step_products`: the layer whose weight is its right operand, and
# whether transposed (forward: x @ W^T; input gradient: dy @ W); None: no weight in it.
PRODUCT_WEIGHTS = [("proj1", True), None, ("proj1_vf", True), None,
                   ("proj2", True), None, ("proj2", False), ("proj3", True), None, ("proj3", False)]
# The layer whose weight gradient each product is (None: not a weight gradient).
PRODUCT_GRADIENTS = [None, "proj1", None, "proj1_vf", None, "proj2", None, None, "proj3", None]
# The layer whose input x is an operand of each product (forward: a; weight gradient: b).
PRODUCT_INPUTS = ["proj1", "proj1", "proj1_vf", "proj1_vf", None, None, None, None, None, None]
WEIGHT_LAYERS = ("proj1", "proj1_vf", "proj2", "proj3")



def step_operands(dims: AdapterDims, batch: int, n_latter: int, weights: dict, dtype,
                  device, outputs: dict | None = None, inputs: dict | None = None) -> list[tuple]:
    """Operands `(a, b, out)` of `step_products`: the layers' own weights where a weight is
    used; the batch's own inputs of proj1 and proj1_vf where given (`inputs`, by layer);
    for a weight gradient, the tensor the trainer writes it into (`outputs`, by layer)
    where it has one, else a tensor made here. A product's time is then its arithmetic
    alone, with no fresh output memory to fault in, and the floor adds little memory."""
    outputs, inputs = outputs or {}, inputs or {}
    triples = []
    for product, uses, grad_of, x_of in zip(step_products(dims, batch, n_latter), PRODUCT_WEIGHTS,
                                            PRODUCT_GRADIENTS, PRODUCT_INPUTS):
        x = inputs.get(x_of)
        a = x if x is not None and uses is not None else torch.randn(product.a, device=device, dtype=dtype)
        if uses is None:
            b = x if x is not None else torch.randn(product.b, device=device, dtype=dtype)
        else:
            weight = weights[uses[0]].to(dtype)
            b = weight.t() if uses[1] else weight
        out = outputs.get(grad_of)
        if out is None or out.dtype != dtype:
            out = torch.empty(product.a[0], product.b[1], device=device, dtype=dtype)
        triples.append((a, b, out))
    return triples


def multiply(triples) -> None:
    for a, b, out in triples:
        torch.mm(a, b, out=out)


def gradient_buffers(model) -> dict:
    """The step's weight gradients, by layer (spent once the optimizer has stepped)."""
    return {name: getattr(model, name).weight.grad for name in WEIGHT_LAYERS
            if getattr(model, name).weight.grad is not None}


def floor_operands(run, batch):
    dims, device = run.dims, run.runtime.device
    weights = {name: getattr(run.model, name).weight.detach() for name in WEIGHT_LAYERS}
    # CUDA autocast multiplies bf16 copies; time the products on bf16 tensors, not the casts.
    dtype = run.runtime.autocast_dtype or torch.float32
    inputs = {"proj1": batch.first.reshape(batch.size, -1).to(dtype),
              "proj1_vf": batch.latter.reshape(-1, batch.latter[0, 0].numel()).to(dtype)}
    return step_operands(dims, batch.size, batch.latter.shape[1], weights, dtype, device,
                         gradient_buffers(run.model), inputs)


def time_step_products(run, triples) -> float:
    """One pass over the step's products with the run's weights, in the step's precision."""
    device = run.runtime.device
    started = clock(device)
    with run.runtime.autocast():
        multiply(triples)
    return clock(device) - started
