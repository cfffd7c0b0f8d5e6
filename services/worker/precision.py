"""Which precision, quantization and compilation the transformers backend runs, decided at start.

`plan_precision` turns the settings into a `PrecisionPlan` and refuses, before any model is
loaded, a combination the device or the installation cannot run (``UnsupportedPrecisionError``
with the reason and what to use instead), so a bad choice never surfaces later as a crash in the
middle of a decode step. `load_options` and `finish_model` then apply the plan:

| device | dtypes | `int8` | `nf4` |
| --- | --- | --- | --- |
| CPU | bfloat16 (`auto` where the CPU computes it in hardware), float32 (`auto` elsewhere) | torch dynamic quantization of every `nn.Linear` (int8 weights, float32 activations) | refused |
| CUDA | float16 (`auto`), bfloat16 (where supported), float32 | bitsandbytes LLM.int8() | bitsandbytes NF4 with double quantization, float16/bfloat16 compute |

On CPU, `auto` is bfloat16 only where the CPU has bfloat16 instructions (AVX-512 BF16 or AMX,
`cpu_computes_bfloat16`): there batched decoding ran about 4x faster than in float32; on a CPU
without them (AVX2 only) torch converts every bfloat16 operand in software and the same batched
`generate` (32 prompts x 32 tokens, 2 threads) made 40 output tokens/s in bfloat16 against 110 in
float32, so `auto` is float32 there. float16 on CPU is refused: few CPU kernels exist for it and
it runs slower than bfloat16.
`LGC_WORKER_COMPILE` wraps the model's forward in `torch.compile(dynamic=True)`, since the decode
loop's shapes change every step (batch joins and leaves, the KV cache grows).
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from typing import Any, Literal

import torch

from services.worker.engine_factory import BackendUnavailableError

__all__ = [
    "PrecisionPlan",
    "UnsupportedPrecisionError",
    "cpu_auto_dtype",
    "cpu_computes_bfloat16",
    "finish_model",
    "load_options",
    "plan_precision",
]

Quantization = Literal["none", "int8", "nf4"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UnsupportedPrecisionError(BackendUnavailableError):
    """The device, dtype, quantization or compile setting cannot run on this machine or installation."""


@dataclass(frozen=True, slots=True)
class PrecisionPlan:
    """How the model is loaded and run (decided once, before loading)."""

    device: torch.device
    dtype: torch.dtype
    """Weights dtype for unquantized layers, and the compute dtype of bitsandbytes layers."""
    quantization: Quantization
    compile: bool

    @property
    def label(self) -> str:
        """What `Info` and the registry report as the worker's dtype, e.g. `bfloat16` or `int8`."""
        name = str(self.dtype).removeprefix("torch.")
        if self.quantization == "none":
            return name
        return f"{self.quantization}+{name}" if self.device.type == "cuda" else self.quantization


def plan_precision(
    device: torch.device, dtype: str, quantization: Quantization, compile: bool
) -> PrecisionPlan:
    """The plan for these settings on `device`; UnsupportedPrecisionError when it cannot run."""
    if device.type == "cpu":
        return PrecisionPlan(device, _cpu_dtype(dtype, quantization), quantization, _check_compile(compile, device))
    if device.type == "cuda":
        return PrecisionPlan(device, _cuda_dtype(dtype, device), _cuda_quantization(quantization), _check_compile(compile, device))
    raise UnsupportedPrecisionError(f"device {device} is not supported; use cpu or cuda")


def load_options(plan: PrecisionPlan) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` (dtype, and bitsandbytes' config on CUDA)."""
    if plan.device.type == "cuda" and plan.quantization != "none":
        from transformers import BitsAndBytesConfig

        if plan.quantization == "int8":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=plan.dtype,
            )
        # bitsandbytes places the weights itself; `device_map` puts them on the chosen GPU.
        return {"dtype": plan.dtype, "quantization_config": config, "device_map": {"": plan.device}}
    return {"dtype": plan.dtype}


def finish_model(model: Any, plan: PrecisionPlan) -> Any:
    """Move, quantize (CPU int8) and compile a loaded model as planned; returns the model to run."""
    if not (plan.device.type == "cuda" and plan.quantization != "none"):
        model.to(plan.device)
    model.eval()
    if plan.device.type == "cpu" and plan.quantization == "int8":
        # Dynamic quantization: int8 weights, activations quantized per call. It replaces the
        # Linear modules (the tied LM head included) in place and keeps the model's interface.
        # Weights per output channel: with one scale per tensor, SmolLM2's greedy text drifted
        # further from float32 (teacher-forced top-1 agreement 38 % against 45 %, bfloat16 93 %).
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, inplace=True)
    if plan.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    return model


def _cpu_dtype(dtype: str, quantization: Quantization) -> torch.dtype:
    if quantization == "nf4":
        raise UnsupportedPrecisionError(
            "LGC_WORKER_QUANTIZATION=nf4 needs bitsandbytes on a CUDA device; on CPU use int8 "
            "(torch dynamic quantization) or none"
        )
    if quantization == "int8":
        if dtype not in ("auto", "float32"):
            raise UnsupportedPrecisionError(
                f"LGC_WORKER_QUANTIZATION=int8 on CPU uses torch dynamic quantization, which runs "
                f"float32 activations; LGC_WORKER_DTYPE={dtype} cannot be combined with it (use auto or float32)"
            )
        return torch.float32
    if dtype == "float16":
        raise UnsupportedPrecisionError(
            "LGC_WORKER_DTYPE=float16 is not supported on CPU (few kernels, slower than bfloat16); "
            "use auto (the default), bfloat16 or float32"
        )
    return _DTYPES[cpu_auto_dtype() if dtype == "auto" else dtype]


def cpu_auto_dtype() -> str:
    """What `LGC_WORKER_DTYPE=auto` means on this CPU, for every backend: bfloat16 where it has
    bfloat16 instructions, else float32 (software bfloat16 ran several times slower)."""
    return "bfloat16" if cpu_computes_bfloat16() else "float32"


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16, or AMX tiles, which come with
    AMX-BF16), as torch detects them. Where torch cannot tell (its checks are private and may
    move), the answer is no: float32 is never the slow choice by much, software bfloat16 is."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and bool(check()) for check in checks)


def _cuda_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise UnsupportedPrecisionError(
            f"LGC_WORKER_DTYPE=bfloat16 but {torch.cuda.get_device_name(device)} has no bfloat16 support; use float16"
        )
    return torch.float16 if dtype == "auto" else _DTYPES[dtype]


def _cuda_quantization(quantization: Quantization) -> Quantization:
    if quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise UnsupportedPrecisionError(
            f"LGC_WORKER_QUANTIZATION={quantization} on CUDA needs bitsandbytes, which is not installed "
            "(pip install bitsandbytes); or use LGC_WORKER_QUANTIZATION=none"
        )
    return quantization


def _check_compile(compile: bool, device: torch.device) -> bool:
    # Inductor generates C++ on CPU (and Triton on CUDA): without a compiler it fails at the first
    # forward, so it is refused here instead.
    if compile and device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        raise UnsupportedPrecisionError(
            "LGC_WORKER_COMPILE=true needs a C++ compiler on CPU (torch inductor); install g++ or turn it off"
        )
    if compile and device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise UnsupportedPrecisionError("LGC_WORKER_COMPILE=true on CUDA needs triton; install it or turn it off")
    return compile
