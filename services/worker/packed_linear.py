"""Linear layers whose weights are reordered once, at load, into oneDNN's blocked layout (CPU).

`torch.nn.Linear` on CPU hands oneDNN a plain row-major weight on every call, and oneDNN reorders
it into the blocked layout its kernels read before it multiplies. The decode step of a small model
is a few hundred small matrix products, so that per-call work is a large part of the step. Here
every `nn.Linear` of the model is replaced by a `PackedLinear` that holds the weight already
reordered (`torch.ops.mkldnn._reorder_linear_weight`) and calls the same kernel PyTorch's own
compiler emits for CPU linears once it has frozen the weights (`torch.ops.mkldnn._linear_pointwise`).

Measured on the 2-core benchmark machine, SmolLM2-135M in bfloat16, 32 rows, one torch thread: a
decode step of 125-137 ms packed against 160-169 ms plain; through the whole embedded cluster (32
streams x 64 tokens) 180 and 209 output tokens/s against 135 and 148 (two runs each). The outputs
are the same to the bit in bfloat16 (the same kernels, only the weight layout differs).

These two operators are internal to PyTorch, so packing is checked on the first layer against
`F.linear` before any layer is replaced; where the operators are missing or disagree, the model
keeps its plain layers and the worker says so in its log.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PackedLinear", "packing_applies", "prepack_linears"]

log = logging.getLogger(__name__)

#: The dtypes whose oneDNN linear kernels take a packed weight (checked on torch 2.13).
PACKABLE_DTYPES = frozenset({torch.bfloat16, torch.float32})


class PackedLinear(nn.Module):
    """`nn.Linear` with its weight held in oneDNN's blocked layout (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            # A buffer, not a parameter: nothing trains it, and the blocked layout is opaque.
            self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach()))
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def packing_applies(model: nn.Module) -> bool:
    """Whether this model's linears can be packed: on CPU, in a packable dtype, oneDNN present."""
    parameter = next(model.parameters(), None)
    return (
        parameter is not None
        and parameter.device.type == "cpu"
        and parameter.dtype in PACKABLE_DTYPES
        and torch.backends.mkldnn.is_available()
    )


def _first_linear(model: nn.Module) -> nn.Linear | None:
    return next((m for m in model.modules() if type(m) is nn.Linear), None)


def _packing_agrees(linear: nn.Linear) -> bool:
    """Whether a packed copy of `linear` gives its output on a probe input (tolerance of its dtype)."""
    weight = linear.weight
    probe = torch.randn(3, linear.in_features, dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            packed = PackedLinear(linear)(probe)
        except RuntimeError as exc:
            # Safe: the operators are internal to PyTorch; without them the plain layers still work.
            log.warning("oneDNN weight packing is not available; linears stay plain", extra={"error": str(exc)})
            return False
        expected = F.linear(probe, weight, linear.bias)
    tolerance = 1e-2 if weight.dtype == torch.bfloat16 else 1e-4
    agrees = torch.allclose(packed.float(), expected.float(), rtol=tolerance, atol=tolerance)
    if not agrees:
        log.warning("oneDNN packed linear disagrees with F.linear; linears stay plain")
    return agrees


def prepack_linears(model: Any) -> int:
    """Replace every plain `nn.Linear` of `model` by a `PackedLinear`; returns how many.

    Subclasses of `nn.Linear` (quantized or otherwise special layers) are left alone, and nothing is
    replaced unless packing applies and agrees with `F.linear` on the first layer.
    """
    first = _first_linear(model)
    if first is None or not packing_applies(model) or not _packing_agrees(first):
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
                replaced += 1
    return replaced
