"""The transformers backend: a causal LM on CPU or CUDA with continuous batching.

All model work happens on ONE engine thread; the event loop only enqueues items and receives
events. The thread sleeps on a condition variable while there is nothing to do (no polling). Each
turn of its loop:

1. takes newly submitted items while there is room in the batch, tokenizes them and checks their
   length (a bad item fails alone, with INVALID_REQUEST);
2. removes cancelled, expired and aborted sequences (so they stop within one decode step);
3. prefills some admitted newcomers together (bounded by `worker_max_prefill_tokens`, and by the
   KV-cache budget beside the running rows: ``kv_budget``), picks their first token and merges
   their KV cache into the running batch (see ``decode_batch``); a prefill runs
   `worker_prefill_chunk_tokens` at a time, and while a batch is decoding one chunk per turn
   (chunked prefill), so a long prompt holds the batch up by a chunk (and a group whose every
   sequence was cancelled is dropped before its next chunk);
4. runs one decode step for every running sequence, picks each row's next token with its own
   sampling parameters and generator, and streams the new text.

With `worker_background_prefill` (CPU, Llama steps), step 3 runs on a second thread while a batch is
decoding: the group's prompts, first tokens and first text are computed there, on the cores the
decode step leaves, and the engine thread merges the group into the batch between two steps, so
the running sequences do not stop for the newcomers. One group is prefilled at a time; with no
batch running, or with newcomers outnumbering the running rows (`worker_prefill_pause_ratio`), the
engine thread prefills itself, on every prefill thread.

Models whose cache cannot be merged (sliding-window or linear-attention layers) still batch, but
newcomers wait until the running batch has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import torch

from services.worker.decode_batch import DecodeBatch, PrefillRun, supports_joining
from services.worker.detokenizer import IncrementalDetokenizer, TokenTexts
from services.worker.engine import (
    Engine,
    EngineEvent,
    EngineInfo,
    EngineObserver,
    EventSink,
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
    deliver_from_thread,
)
from services.worker.kv_budget import GIB, KVBudget
from services.worker.llama_decode import WIDE_MIN_ROWS, LlamaDecoder
from services.worker.packed_linear import prepack_linears
from services.worker.precision import (
    PrecisionPlan,
    UnsupportedPrecisionError,
    finish_model,
    load_options,
    plan_precision,
)
from services.worker.prefix_cache import PrefixCache
from services.worker.prompt_encoding import PromptEncoder, PromptError
from services.worker.prompt_logprobs import PromptPosition
from services.worker.realtime_scheduling import REALTIME_PRIORITY, use_realtime_scheduling
from services.worker.sampling import (
    RowLogprobs,
    RowSampling,
    SamplingTable,
    ban_tokens,
    make_generator,
    pick_next_tokens,
    raw_logprobs,
)
from services.worker.settings import WorkerSettings
from services.worker.stop_strings import StopStringMatcher
from shared.model_store import prepare_model, resolve_model

__all__ = ["TransformersEngine", "pick_device", "plan_for"]

log = logging.getLogger(__name__)

_Events = list[tuple[SequenceHandle, EngineEvent]]


def pick_device(setting: str) -> torch.device:
    """`auto`: the first CUDA device when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedPrecisionError(f"LGC_WORKER_DEVICE={setting} but CUDA is not available on this machine")
    return device


def plan_for(settings: WorkerSettings) -> PrecisionPlan:
    """The precision plan of these settings on the device they pick; refuses what cannot run."""
    return plan_precision(
        pick_device(settings.worker_device),
        settings.worker_dtype,
        settings.worker_quantization,
        settings.worker_compile,
    )


@dataclass(eq=False, slots=True)
class _Sequence:
    """An admitted sequence's generation state (engine thread only)."""

    handle: SequenceHandle
    prompt_ids: list[int]
    budget: int
    detokenizer: IncrementalDetokenizer
    stops: StopStringMatcher
    sampling: RowSampling
    generated: int = 0
    unreported: int = 0
    """Tokens generated since the last delta."""
    ttft_ms: float = 0.0
    output_ids: list[int] | None = None
    """The answer's tokens so far (a continuation's included), kept only where the presence or
    frequency penalty needs them."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """Log probabilities of the tokens generated since the last delta (when the item asked)."""
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    """The prompt's log probabilities (when the item asked), until the first delta takes them."""
    token_ids: list[int] | None = None
    """Ids of the tokens generated since the last delta (when the item asked: `return_token_ids`)."""
    ends: tuple[int, ...] = ()
    """Token ids that end this sequence: the model's end of sequence (unless `ignore_eos`) and the
    item's `stop_token_ids` (those the output head has)."""
    min_new: int = 0
    """Tokens to generate before one of `ends` may be picked (`min_tokens`)."""


class TransformersEngine(Engine):
    """A Hugging Face causal LM served with a manual, continuously batched decode loop."""

    def __init__(self, settings: WorkerSettings, observer: EngineObserver | None = None) -> None:
        self._settings = settings
        self._observer: EngineObserver = observer or NullObserver()
        self._cond = threading.Condition()
        self._inbox: deque[SequenceHandle] = deque()
        self._admitted: deque[_Sequence] = deque()
        self._prefilling: list[_Sequence] = []
        self._chunked: PrefillRun | None = None
        """The prefill of `_prefilling` under way on the engine thread a chunk per turn (None: none)."""
        self._rows: list[_Sequence] = []
        self._batch: DecodeBatch | None = None
        self._table: SamplingTable | None = None
        self._active: dict[int, SequenceHandle] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: str | None = None
        self._info: EngineInfo | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self._token_texts: TokenTexts | None = None
        self._decoder: LlamaDecoder | None = None
        self._prefixes: PrefixCache | None = None
        self._prefill_pool: ThreadPoolExecutor | None = None
        """The prefill thread (`worker_background_prefill`), None when prefills run on the engine thread."""
        self._realtime = False
        """Whether the engine's threads take SCHED_FIFO (decided at start; False once refused)."""
        self._job: Future[tuple[DecodeBatch | None, list[_Sequence]]] | None = None
        """The prefill thread's result for the group in `_prefilling` (engine thread only): the
        group's batch (None when every sequence ended at its first token) and the sequences still
        running, in the batch's row order."""

    # ---------------------------------------------------------------- lifecycle (event loop side)

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise RuntimeError("the model is not loaded yet")
        return self._info

    @property
    def running(self) -> int:
        return len(self._rows) + len(self._prefilling)

    @property
    def waiting(self) -> int:
        return len(self._inbox) + len(self._admitted)

    @property
    def failure(self) -> str | None:
        return self._failure

    def load(self) -> None:
        """Find, convert (once) and load the model and tokenizer. Blocking: call off the loop."""
        # Imported here: transformers takes seconds to import and the simulated backend never needs it.
        from transformers import AutoModelForCausalLM, AutoTokenizer

        settings = self._settings
        source = prepare_model(resolve_model(settings.model), settings.state_dir)
        plan = plan_for(settings)
        device = plan.device
        usable = len(os.sched_getaffinity(0))
        self._threads = settings.worker_threads or usable
        self._prefill_threads = settings.worker_prefill_threads or usable
        # The cores the decode steps leave: for the prefill thread and real-time scheduling.
        self._spare_cores = usable - self._threads
        if device.type == "cpu":
            torch.set_num_threads(self._threads)
        log.info(
            "loading model",
            extra={"model": source.served_name, "path": source.path, "device": str(device), "dtype": plan.label},
        )
        started = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(source.path)
        model = finish_model(AutoModelForCausalLM.from_pretrained(source.path, **load_options(plan)), plan)
        if (
            settings.worker_llama_decode
            and not settings.worker_compile
            and device.type == "cpu"
            and LlamaDecoder.supports(model)
        ):
            # CPU only: measured there, not on CUDA. Not with torch.compile, which compiles the
            # forward this would bypass. Before packing: the decoder fuses plain linears.
            self._decoder = LlamaDecoder(model, settings.worker_max_batch_size)
        log.info("model steps", extra={"path": "llama_decode" if self._decoder else "transformers forward"})
        if settings.worker_prepack_weights and not settings.worker_compile:
            # Not with torch.compile: the compiled forward was traced over the plain layers.
            packed = prepack_linears(model)
            log.info("linear weights prepacked for oneDNN", extra={"layers": packed})
        config = model.config.get_text_config()
        model_limit = getattr(config, "max_position_embeddings", None) or settings.worker_max_model_len
        max_model_len = min(settings.worker_max_model_len, model_limit)
        if max_model_len < settings.worker_max_model_len:
            log.warning(
                "worker_max_model_len is beyond the model's limit; using the model's",
                extra={"configured": settings.worker_max_model_len, "model_limit": model_limit},
            )
        output = model.get_output_embeddings()
        # `out_features`: a dynamically quantized head has no `weight` tensor, only a method.
        self._vocab_size = int(output.out_features) if output is not None else int(config.vocab_size)
        self._eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else next(iter(self._eos_ids), 0))
        self._device = device
        self._joinable = supports_joining(model)
        if not self._joinable:
            log.warning("this model's KV cache cannot be merged: newcomers wait for the running batch to finish")
        if settings.worker_prefix_cache_tokens and self._joinable:
            # Plain full-attention layers only, whose keys and values a prefix hands every row as
            # they are (a sliding window's cache would drop its oldest columns).
            self._prefixes = PrefixCache(settings.worker_prefix_cache_tokens)
        # Token-id prompts may use ids that both the tokenizer (to decode them) and the embedding
        # (to run them) have.
        self._encoder = PromptEncoder(tokenizer, max_model_len, vocab_size=min(len(tokenizer), self._vocab_size))
        self._kv_budget = KVBudget.for_model(model, device, settings.worker_kv_cache_gb, max_model_len)
        log.info(
            "KV cache budget",
            extra={
                "gib": round(self._kv_budget.limit_bytes / GIB, 3),
                "tokens": self._kv_budget.limit_bytes // self._kv_budget.bytes_per_token,
            },
        )
        self.model, self.tokenizer = model, tokenizer
        self._token_texts = TokenTexts(tokenizer)
        self._info = EngineInfo(
            model=source.served_name,
            backend="transformers",
            device=str(device),
            dtype=plan.label,
            max_batch_size=settings.worker_max_batch_size,
            max_model_len=max_model_len,
            simulated=False,
        )
        log.info("model loaded", extra={"model": source.served_name, "seconds": round(time.monotonic() - started, 2)})

    def start_thread(self) -> None:
        """Start the engine thread (after `load`)."""
        if self.model is None:
            raise RuntimeError("load() the model before starting the engine thread")
        settings = self._settings
        spare = self._spare_cores
        if settings.worker_background_prefill and self._decoder is not None and self._joinable and spare > 0:
            # CPU and the Llama steps only: measured there (worker README, "Prefills beside the
            # decode steps"); a group's prefill builds its own slab, so it shares nothing mutable
            # with the running batch. Its torch threads are the cores the decode steps leave (and
            # no more than a prefill may use); with none left it would only take the decode
            # threads' cores, so prefills stay on the engine thread then.
            threads = min(spare, self._prefill_threads)
            self._prefill_pool = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="lgc-prefill",
                initializer=self._start_prefill_thread,
                initargs=(threads,),
            )
            log.info("newcomers are prefilled beside the decode steps", extra={"prefill_threads": threads})
        # With a core left to the rest of the process and machine (realtime_scheduling).
        self._realtime = settings.worker_realtime_threads and self._device.type == "cpu" and spare > 0
        self._thread = threading.Thread(target=self._run, name="lgc-engine", daemon=True)
        self._thread.start()

    async def start(self) -> None:
        await asyncio.to_thread(self.load)
        self.start_thread()

    def close(self) -> None:
        """Stop the engine thread; sequences still active fail with OVERLOADED. Blocking."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    async def stop(self) -> None:
        await asyncio.to_thread(self.close)

    # ---------------------------------------------------------------- requests (event loop side)

    def submit(self, item: WorkItem, sink: EventSink) -> SequenceHandle:
        loop = asyncio.get_running_loop()
        handle = SequenceHandle(item, sink, loop)
        with self._cond:
            code, refusal = FailureCode.OVERLOADED, None
            if self._failure is not None:
                code, refusal = FailureCode.INTERNAL, self._failure
            elif self._thread is None:
                refusal = "the model is still loading"
            elif self._stopping:
                refusal = "the worker is shutting down"
            if refusal is None:
                self._active[handle.key] = handle
                self._inbox.append(handle)
                self._cond.notify()
                return handle
        handle.ended = True
        loop.call_soon(sink, SequenceFailed(item.request_id, code, refusal))
        return handle

    def cancel(self, handle: SequenceHandle) -> bool:
        if handle.ended or handle.cancelled:
            return False
        handle.cancelled = True
        self._wake()
        return True

    def active(self) -> list[SequenceHandle]:
        with self._cond:
            return list(self._active.values())

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ---------------------------------------------------------------- engine thread

    def _run(self) -> None:
        if self._device.type == "cpu":
            # Again on this thread: with OpenMP the thread count can be per calling thread.
            torch.set_num_threads(self._threads)
        try:
            try:
                self._take_realtime_scheduling()
                if self._decoder is not None:
                    self._decoder.wide_threads = self._decode_wide_threads()
                    if self._decoder.wide_threads > self._threads:
                        log.info(
                            "a decode step's MLP projections and output head run on more threads",
                            extra={"threads": self._decoder.wide_threads, "min_rows": WIDE_MIN_ROWS},
                        )
                with torch.inference_mode():
                    self._serve()
            except Exception as exc:
                # Safe as a fail-stop: an error outside a model step (taking work, handing events
                # over) leaves the scheduler's state unknown, so nothing is generated any more:
                # every sequence fails with INTERNAL (the batcher retries elsewhere) and the worker
                # stops to be restarted, instead of leaving requests to hang until their deadlines.
                self._fail_stop(exc)
                return
            self._fail_all(FailureCode.OVERLOADED, "the worker is shutting down", include_inbox=True)
        finally:
            if self._prefill_pool is not None:
                self._prefill_pool.shutdown(wait=True)

    def _decode_wide_threads(self) -> int:
        """Threads for the decode steps' largest products (`worker_decode_wide_threads`): unset,
        every usable core once this thread runs under SCHED_FIFO (its OpenMP threads, started by
        it, inherit that and preempt the other services), otherwise the decode threads alone."""
        chosen = self._settings.worker_decode_wide_threads
        if chosen is not None:
            return chosen
        return self._threads + self._spare_cores if self._realtime else self._threads

    def _take_realtime_scheduling(self) -> None:
        """SCHED_FIFO for this thread where `start_thread` chose it (`realtime_scheduling`)."""
        if not self._realtime:
            return
        refusal = use_realtime_scheduling()
        if refusal is None:
            log.info("the engine's threads run under SCHED_FIFO", extra={"priority": REALTIME_PRIORITY})
        else:
            self._realtime = False
            log.info("the engine's threads keep the normal scheduler", extra={"reason": refusal})

    def _serve(self) -> None:
        """The engine thread's loop, until `close()`."""
        while True:
            events: _Events = []
            taken = self._take_work(events)
            self._deliver(events)
            if taken is None:
                return
            try:
                self._iterate(taken)
            except Exception as exc:
                # Safe: the failure is reported on every sequence it touched (INTERNAL, which
                # the batcher retries elsewhere) and the engine carries on with a fresh batch.
                log.exception("generation failed; failing the running batch")
                self._fail_all(FailureCode.INTERNAL, f"the model failed: {type(exc).__name__}: {exc}")

    def _fail_stop(self, exc: Exception) -> None:
        """Fail for good (`EngineFailedError`): refuse new items, fail every held one, tell the
        service."""
        message = f"the worker's engine failed: {type(exc).__name__}: {exc}"
        log.error("the engine thread failed; failing every sequence and stopping", exc_info=exc)
        with self._cond:
            self._failure = message
            self._stopping = True
        if self.on_failure is not None:
            self.on_failure(message)  # first: the service stops whatever happens below
        try:
            self._fail_all(FailureCode.INTERNAL, message, include_inbox=True)
        except Exception:
            # Safe: the sequences could not be told (their loop may be gone); the worker stops,
            # which ends their RPCs, and the batcher retries them elsewhere.
            log.exception("could not fail the engine's sequences")

    def _take_work(self, events: _Events) -> list[SequenceHandle] | None:
        """Block until there is work; return the items to admit now (None: stop)."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = time.time()
                for handle in [h for h in self._inbox if self._stop_event(h, now, None) is not None]:
                    self._inbox.remove(handle)
                    self._end(handle, self._stop_event(handle, now, None), events)  # type: ignore[arg-type]
                job = self._job
                room = self._room()
                # Newcomers wait while a group is on the prefill thread (one group at a time), and
                # items while the batch is full; the group's end wakes this thread
                # (`_start_background_prefill`), and so does a row leaving (this thread's own).
                prefillable = (bool(self._admitted) and job is None) or self._chunked is not None
                takeable = bool(self._inbox) and room > 0
                if takeable or self._rows or prefillable or (job is not None and job.done()):
                    break
                if events:
                    return []  # deliver what was reaped before sleeping
                self._cond.wait()
            return [self._inbox.popleft() for _ in range(max(0, min(room, len(self._inbox))))]

    def _room(self) -> int:
        """How many more items the batch can take now (rows, the group being prefilled and the
        admitted ones count against `worker_max_batch_size`)."""
        if self._rows and not self._joinable:
            return 0
        held = len(self._rows) + len(self._prefilling) + len(self._admitted)
        return self._settings.worker_max_batch_size - held

    def _iterate(self, taken: list[SequenceHandle]) -> None:
        events: _Events = []
        for handle in taken:
            self._admit(handle, events)
        self._reap(events)
        self._deliver(events)
        self._join_prefilled()
        if self._chunked is not None:
            events = []
            self._prefill_some(events)
            self._deliver(events)
        elif self._admitted and self._job is None and self._next_fits():
            if self._batch is not None and self._prefill_pool is not None and not self._pause_for_prefill():
                self._start_background_prefill()
            else:
                events = []
                self._prefill_some(events)
                self._deliver(events)
        if self._batch is not None:
            events = []
            self._decode_step(events)
            self._deliver(events)
        self._report_cache()

    def _admit(self, handle: SequenceHandle, events: _Events) -> None:
        try:
            encoded = self._encoder.encode(handle.item)
        except PromptError as exc:
            self._end(handle, SequenceFailed(handle.request_id, FailureCode.INVALID_REQUEST, str(exc)), events)
            return
        except Exception as exc:
            # Safe: only this item is affected (a tokenizer failure); it fails with INTERNAL and
            # the others go on.
            log.exception("could not tokenize an item", extra={"request_id": handle.request_id})
            failure = SequenceFailed(handle.request_id, FailureCode.INTERNAL, f"tokenization failed: {exc}")
            self._end(handle, failure, events)
            return
        params = handle.item.params
        beyond = max((token for token, _ in params.logit_bias), default=-1)
        if beyond >= self._vocab_size:
            message = f"logit_bias names token id {beyond}; this model's vocabulary has {self._vocab_size} tokens"
            self._end(handle, SequenceFailed(handle.request_id, FailureCode.INVALID_REQUEST, message), events)
            return
        admission = encoded.admission_delta(handle.item)
        if admission is not None:
            events.append((handle, admission))
        if encoded.budget == 0:
            # The continuation already used up max_new_tokens: nothing left to generate.
            finished = SequenceFinished(
                handle.request_id, FinishReason.LENGTH, len(encoded.ids), 0, 0.0, handle.elapsed_ms()
            )
            self._end(handle, finished, events)
            return
        self._admitted.append(
            _Sequence(
                handle=handle,
                prompt_ids=encoded.ids,
                budget=encoded.budget,
                detokenizer=IncrementalDetokenizer(self.tokenizer, encoded.ids),
                stops=StopStringMatcher(params.stop),
                sampling=RowSampling(params, make_generator(params, self._device)),
                output_ids=list(encoded.continuation_ids) if params.penalises_output else None,
                ends=self._ends_of(params),
                min_new=handle.item.remaining_min_tokens,
                token_ids=[] if params.return_token_ids else None,
            )
        )

    def _ends_of(self, params: SamplingParams) -> tuple[int, ...]:
        """The token ids that end a sequence with these parameters (see `_Sequence.ends`)."""
        ends = set() if params.ignore_eos else set(self._eos_ids)
        # An id beyond the output head can never be picked, so it can never end anything.
        ends.update(token for token in params.stop_token_ids if token < self._vocab_size)
        return tuple(sorted(ends))

    def _stop_event(self, handle: SequenceHandle, now: float, seq: _Sequence | None) -> EngineEvent | None:
        """The terminal event if this sequence must stop before the next step, else None."""
        if handle.abort is not None:
            return handle.abort
        generated = seq.generated if seq is not None else 0
        if handle.cancelled:
            prompt_tokens = len(seq.prompt_ids) if seq is not None else 0
            ttft = seq.ttft_ms if seq is not None else 0.0
            return SequenceFinished(
                handle.request_id, FinishReason.CANCELLED, prompt_tokens, generated, ttft, handle.elapsed_ms()
            )
        if handle.expired(now):
            return SequenceFailed(
                handle.request_id,
                FailureCode.DEADLINE_EXCEEDED,
                f"the deadline passed after {generated} generated tokens",
            )
        return None

    def _reap(self, events: _Events) -> None:
        now = time.time()
        for seq in [s for s in self._admitted if self._stop_event(s.handle, now, s) is not None]:
            self._admitted.remove(seq)
            self._end(seq.handle, self._stop_event(seq.handle, now, seq), events)  # type: ignore[arg-type]
        keep = []
        for index, seq in enumerate(self._rows):
            event = self._stop_event(seq.handle, now, seq)
            if event is None:
                keep.append(index)
            else:
                self._end(seq.handle, event, events)
        self._keep_rows(keep)

    def _keep_rows(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._batch = [], None
        else:
            assert self._batch is not None
            order = self._batch.keep(keep)
            self._rows = [self._rows[i] for i in order]
        self._table = None

    def _choose_prefill_group(self) -> list[_Sequence]:
        """The admitted sequences to prefill together: first come first, within the prefill's
        token budget and the KV-cache budget (beside the running rows). The first always comes
        (`_next_fits` is asked before)."""
        budget = self._settings.worker_max_prefill_tokens
        chosen: list[_Sequence] = []
        longest = 0
        while self._admitted:
            wider = max(longest, len(self._admitted[0].prompt_ids))
            if chosen and wider * (len(chosen) + 1) > budget:
                break
            if chosen and not self._fits_in_cache([*chosen, self._admitted[0]]):
                break
            chosen.append(self._admitted.popleft())
            longest = wider
        return chosen

    def _next_fits(self) -> bool:
        """Whether the first admitted sequence fits in the KV-cache budget beside the running rows
        (with none running it always does: the budget holds one sequence of the longest length)."""
        return not self._rows or self._fits_in_cache([self._admitted[0]])

    def _fits_in_cache(self, joining: list[_Sequence]) -> bool:
        """Whether the running rows and `joining` together stay within the KV-cache budget."""
        return self._kv_budget.fits([len(s.prompt_ids) + s.budget for s in (*self._rows, *joining)])

    def _pause_for_prefill(self) -> bool:
        """Whether the newcomers outnumber the running rows enough (`worker_prefill_pause_ratio`)
        that the batch should pause for their prefill on every prefill thread."""
        ratio = self._settings.worker_prefill_pause_ratio
        return ratio > 0 and len(self._admitted) >= ratio * len(self._rows)

    def _prefill_some(self, events: _Events) -> None:
        """Prefill a group on the engine thread, on every prefill thread, and merge it: the next
        chunk of the group under way (choosing one first), and with no batch decoding every chunk
        left (nothing would step between them)."""
        if self._chunked is not None and self._drop_stopped_prefill(events):
            return
        with self._prefill_thread_count():
            if self._chunked is None:
                self._prefilling = self._choose_prefill_group()
                self._chunked = self._begin_prefill(self._prefilling)  # may run a shared prefix
            run = self._chunked
            run.advance()
            while not run.done and self._batch is None:
                run.advance()
        if not run.done:
            return
        chosen, self._chunked, self._prefilling = self._prefilling, None, []
        batch, joining = self._first_tokens(chosen, run, events)
        if batch is not None:
            self._join(batch, joining)

    def _drop_stopped_prefill(self, events: _Events) -> bool:
        """Between two chunks: if every sequence of the group must stop (cancelled, expired,
        aborted), end them and drop the prefill with its slab rather than run the chunks left.
        (While some go on, the stopped ones leave after the merge, as rows do.)"""
        now = time.time()
        stops = [self._stop_event(s.handle, now, s) for s in self._prefilling]
        if any(stop is None for stop in stops):
            return False
        for seq, stop in zip(self._prefilling, stops, strict=True):
            self._end(seq.handle, stop, events)  # type: ignore[arg-type]
        self._chunked, self._prefilling = None, []
        return True

    def _start_background_prefill(self) -> None:
        """Hand a group to the prefill thread; `_join_prefilled` merges it once it is done."""
        assert self._prefill_pool is not None
        chosen = self._choose_prefill_group()
        self._prefilling = chosen
        self._job = self._prefill_pool.submit(self._prefill_beside, chosen)
        self._job.add_done_callback(lambda _: self._wake())

    def _prefill_beside(self, chosen: list[_Sequence]) -> tuple[DecodeBatch | None, list[_Sequence]]:
        """On the prefill thread: the group's prefill and first tokens, whose text goes out at once
        rather than after the decode step running meanwhile. The group's sequences are this
        thread's alone until `_join_prefilled` takes them."""
        events: _Events = []
        try:
            with torch.inference_mode():
                return self._prefill_group(chosen, events)
        finally:
            self._deliver(events)

    def _join_prefilled(self) -> None:
        """Merge the group the prefill thread finished, if any, into the running batch."""
        job, group = self._job, self._prefilling
        if job is None or not job.done():
            return
        self._job, self._prefilling = None, []
        try:
            batch, joining = job.result()
        except Exception as exc:
            # Safe: the failure is the group's alone (its own prompts and slab); its sequences fail
            # with INTERNAL, which the batcher retries elsewhere, and the running batch goes on.
            log.exception("prefill failed; failing its sequences")
            message = f"the model failed: {type(exc).__name__}: {exc}"
            self._fail_handles([s.handle for s in group], FailureCode.INTERNAL, message)
            return
        if batch is not None:
            self._join(batch, joining)

    def _prefill_group(
        self, chosen: list[_Sequence], events: _Events
    ) -> tuple[DecodeBatch | None, list[_Sequence]]:
        """Prefill `chosen` (every chunk) into a batch of their own and pick their first tokens
        (`_first_tokens`)."""
        run = self._begin_prefill(chosen)
        while not run.done:
            run.advance()
        return self._first_tokens(chosen, run, events)

    def _begin_prefill(self, chosen: list[_Sequence]) -> PrefillRun:
        """The prefill of `chosen`, laid out and ready to run chunk by chunk (a shared prefix
        not cached yet is run here)."""
        reused_before = self._prefixes.reused_tokens if self._prefixes is not None else 0
        run = PrefillRun(
            self.model,
            [s.prompt_ids for s in chosen],
            self._pad_id,
            self._vocab_size,
            self._device,
            self._decoder,
            self._prefixes,
            self._settings.worker_prefill_chunk_tokens,
            [s.sampling.params.prompt_logprobs for s in chosen],
        )
        if self._prefixes is not None and self._prefixes.reused_tokens > reused_before:
            self._observer.prefix_reused(self._prefixes.reused_tokens - reused_before)
        return run

    def _first_tokens(
        self, chosen: list[_Sequence], run: PrefillRun, events: _Events
    ) -> tuple[DecodeBatch | None, list[_Sequence]]:
        """The finished prefill's batch with `chosen`'s first tokens picked; returns that batch
        (None if every sequence ended at once) and the sequences still running, in its row order."""
        batch, logits = run.result()
        for seq, positions in zip(chosen, run.prompt_logprobs(), strict=True):
            if positions is not None:
                seq.prompt_logprobs = self._prompt_logprobs(seq.prompt_ids[0], positions)
        table = SamplingTable([s.sampling for s in chosen], self._vocab_size, self._device)
        raw = raw_logprobs(logits, table)
        ban_tokens(logits, _early_ends(chosen))
        tokens = pick_next_tokens(logits, table, batch.seen, _outputs(chosen, table), in_place=True)
        batch.record_tokens(tokens)
        self._observer.tokens(len(chosen))
        keep = self._accept_tokens(chosen, tokens.tolist(), events, None if raw is None else raw.for_tokens(tokens))
        if not keep:
            return None, []
        if len(keep) < len(chosen):
            keep = batch.keep(keep)
        return batch, [chosen[i] for i in keep]

    def _join(self, batch: DecodeBatch, joining: list[_Sequence]) -> None:
        """Merge a prefilled group into the running batch (or make it the running batch)."""
        if self._batch is None:
            self._batch, self._rows = batch, joining
        else:
            self._batch.absorb(batch)
            self._rows = self._rows + joining
        self._table = None

    def _start_prefill_thread(self, threads: int) -> None:
        """The prefill thread's set-up: its torch threads, and the engine thread's scheduling
        (said, not inherited: the pool may start its thread from any thread)."""
        torch.set_num_threads(threads)
        if self._realtime and use_realtime_scheduling() is not None:
            log.warning("the prefill thread keeps the normal scheduler")

    @contextlib.contextmanager
    def _prefill_thread_count(self) -> Iterator[None]:
        """torch's thread count for a prefill: large matrix products gain from every core, while a
        decode step's many small ones lose more to waiting at OpenMP barriers (worker README)."""
        if self._device.type != "cpu" or self._prefill_threads == self._threads:
            yield
            return
        torch.set_num_threads(self._prefill_threads)
        try:
            yield
        finally:
            torch.set_num_threads(self._threads)

    def _decode_step(self, events: _Events) -> None:
        assert self._batch is not None
        if self._table is None:
            self._table = SamplingTable([s.sampling for s in self._rows], self._vocab_size, self._device)
        started = time.monotonic()
        logits = self._batch.step()
        outputs = _outputs(self._rows, self._table)
        raw = raw_logprobs(logits, self._table)
        ban_tokens(logits, _early_ends(self._rows))
        tokens = pick_next_tokens(logits, self._table, self._batch.seen, outputs, in_place=True)
        self._batch.record_tokens(tokens)
        picked = tokens.tolist()
        self._observer.decode_step(len(self._rows), time.monotonic() - started)
        self._observer.tokens(len(self._rows))
        logprobs = None if raw is None else raw.for_tokens(tokens)
        self._keep_rows(self._accept_tokens(self._rows, picked, events, logprobs))

    def _report_cache(self) -> None:
        """Tell the observer how much KV cache the running batch holds (after every turn)."""
        batch = self._batch
        if batch is None:
            self._observer.kv_cache(0, 0)
        else:
            self._observer.kv_cache(batch.size * batch.length, batch.cache_nbytes())

    def _accept_tokens(
        self,
        seqs: list[_Sequence],
        tokens: list[int],
        events: _Events,
        logprobs: list[RowLogprobs | None] | None = None,
    ) -> list[int]:
        """Process one new token per sequence (with its log probabilities, for the rows that asked);
        returns the indices of those still running."""
        if logprobs is not None:
            for seq, token, row in zip(seqs, tokens, logprobs, strict=True):
                if row is not None:
                    seq.logprobs.append(self._token_logprob(token, row))
        return [i for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)) if self._accept(seq, token, events)]

    def _prompt_logprobs(self, first: int, positions: list[PromptPosition]) -> tuple[TokenLogprob, ...]:
        """A prompt's log probabilities as TokenLogprobs: its first token without one (logprob 0,
        no alternatives: nothing comes before it), then each later position's."""
        later = (self._named(p.token_id, p.logprob, p.top, rank=p.rank) for p in positions)
        return (self._named(first, 0.0, ()), *later)

    def _token_logprob(self, token: int, row: RowLogprobs) -> TokenLogprob:
        return self._named(token, row.logprob, row.top)

    def _named(
        self, token: int, logprob: float, top: tuple[tuple[int, float], ...], *, rank: int | None = None
    ) -> TokenLogprob:
        """A token's entry with its alternatives, each named by its text (`TokenTexts`)."""
        assert self._token_texts is not None
        names = self._token_texts
        return TokenLogprob(token, names(token), logprob, tuple(TopLogprob(t, names(t), v) for t, v in top), rank)

    def _accept(self, seq: _Sequence, token: int, events: _Events) -> bool:
        seq.generated += 1
        seq.unreported += 1
        if seq.output_ids is not None:
            seq.output_ids.append(token)
        if seq.token_ids is not None:
            seq.token_ids.append(token)
        if seq.generated == 1:
            seq.ttft_ms = seq.handle.elapsed_ms()
            self._observer.first_token(seq.ttft_ms / 1000.0)
        if token in seq.ends:
            self._emit(seq, self._final_text(seq), events, last=True)
            self._finish(seq, FinishReason.STOP, events)
            return False
        text = seq.stops.feed(seq.detokenizer.add(token), match=seq.generated > seq.min_new)
        if seq.stops.stopped:
            self._emit(seq, text, events, last=True)
            self._finish(seq, FinishReason.STOP, events)
            return False
        if seq.generated >= seq.budget:
            text += self._final_text(seq)
            self._emit(seq, text, events, last=True)
            self._finish(seq, FinishReason.STOP if seq.stops.stopped else FinishReason.LENGTH, events)
            return False
        self._emit(seq, text, events)
        return True

    @staticmethod
    def _final_text(seq: _Sequence) -> str:
        """Everything held back, at the end of generation (unless a stop string cuts it)."""
        text = seq.stops.feed(seq.detokenizer.flush(), match=seq.generated > seq.min_new)
        return text + seq.stops.flush()

    @staticmethod
    def _emit(seq: _Sequence, text: str, events: _Events, *, last: bool = False) -> None:
        """A delta with `text` and the tokens since the previous one; none while there is no text
        (the tokens wait with the text they belong to), except at the `last` token of a sequence
        whose log probabilities or token ids are still unsent (an end-of-sequence token adds no
        text), and for the first token of a sequence that asked for its prompt's log probabilities
        (they leave at once, on this delta)."""
        if text or (last and (seq.logprobs or seq.token_ids)) or seq.prompt_logprobs:
            token_ids = () if seq.token_ids is None else tuple(seq.token_ids)
            delta = TextDelta(
                seq.handle.request_id, text, seq.unreported, tuple(seq.logprobs), seq.prompt_logprobs, None, token_ids
            )
            events.append((seq.handle, delta))
            seq.unreported = 0
            seq.logprobs.clear()
            seq.prompt_logprobs = ()
            if seq.token_ids is not None:
                seq.token_ids.clear()

    def _finish(self, seq: _Sequence, reason: FinishReason, events: _Events) -> None:
        handle = seq.handle
        finished = SequenceFinished(
            handle.request_id, reason, len(seq.prompt_ids), seq.generated, seq.ttft_ms, handle.elapsed_ms()
        )
        self._end(handle, finished, events)

    def _end(self, handle: SequenceHandle, event: EngineEvent, events: _Events) -> None:
        handle.ended = True
        with self._cond:
            self._active.pop(handle.key, None)
        events.append((handle, event))

    def _fail_all(self, code: FailureCode, message: str, *, include_inbox: bool = False) -> None:
        job, self._job = self._job, None
        if job is not None:
            # The group's sequences are the prefill thread's until it is done with them.
            wait([job])
        seqs = [*self._prefilling, *self._rows, *self._admitted]
        self._prefilling, self._rows, self._batch, self._table, self._chunked = [], [], None, None, None
        self._admitted.clear()
        self._report_cache()
        handles = [s.handle for s in seqs]
        if include_inbox:
            with self._cond:
                handles += list(self._inbox)
                self._inbox.clear()
        self._fail_handles(handles, code, message)

    def _fail_handles(self, handles: list[SequenceHandle], code: FailureCode, message: str) -> None:
        events: _Events = []
        for handle in handles:
            if not handle.ended:
                self._end(handle, SequenceFailed(handle.request_id, code, message), events)
        self._deliver(events)

    @staticmethod
    def _deliver(events: _Events) -> None:
        if events:
            deliver_from_thread(events)


def _outputs(seqs: list[_Sequence], table: SamplingTable) -> list[list[int] | None] | None:
    """Each row's answer so far, for `pick_next_tokens` (None: no row of `table` needs them)."""
    return [s.output_ids for s in seqs] if table.output_penalties else None


def _early_ends(seqs: list[_Sequence]) -> list[tuple[int, tuple[int, ...]]]:
    """(row, token ids) that row may not pick yet: its ends, until it has `min_new` tokens."""
    return [(row, seq.ends) for row, seq in enumerate(seqs) if seq.generated < seq.min_new and seq.ends]


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the generation config and the tokenizer."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
