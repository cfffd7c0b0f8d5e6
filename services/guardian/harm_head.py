"""The harm head: a trained logistic regression giving the probability that a chunk of text asks
for harm (any of S1-S14), from two kinds of features side by side: the chunk's words (TF-IDF) and
its all-MiniLM-L6-v2 vector (which the semantic detector computes anyway). The semantic detector
adds the probability, weighted, to its nearest-exemplar margin (`semantic_detector.py`).

Why both: cross-validated on the dev split plus the project's extra training texts
(`harm_head_training.py`), a regression on the sentence vectors alone scored F1 0.5-0.6 at benign
FPR <= 1 %, well below the nearest exemplars; words alone were about as weak, but their errors
differ from the exemplars' and the vector adds what words miss (synonyms): exemplars alone 0.70,
plus a words-only head 0.87, plus the words-and-vector head 0.90 (harm F1 over both sources at
the same FPR caps).

The weights are `harm_head.npz` beside this module, produced by `harm_head_training.py` (seeded),
loaded with numpy only (no pickle, no scikit-learn at run time). The word features reproduce
scikit-learn's `TfidfVectorizer(sublinear_tf=True)`: lower-cased word tokens of two or more word
characters, 1 + ln(count), times the IDF, L2-normalised. The vector's coefficients already hold
the scale it was trained at.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.guardian.sentence_encoder import EMBEDDING_DIM

__all__ = ["HARM_HEAD_PATH", "HarmHead", "HarmHeadDecision", "HarmHeadFileError"]

#: The shipped weights.
HARM_HEAD_PATH = Path(__file__).with_name("harm_head.npz")
#: scikit-learn's default token pattern: the head must split words exactly as it was trained.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
#: Arrays a weights file must hold.
_REQUIRED = ("vocabulary", "idf", "word_coef", "vector_coef", "intercept", "decision", "corpus_sha256")


class HarmHeadFileError(ValueError):
    """A weights file that is missing, unreadable or not shaped like a harm head."""


@dataclass(frozen=True, slots=True)
class HarmHeadDecision:
    """The decision parameters the training script chose (cross-validated), stored with the
    weights so that both always come from the same run."""

    similarity_floor: float
    """Least similarity to a harm exemplar (top-k mean) for a chunk to be reported at all."""
    margin: float
    """Least (harm similarity - benign similarity + weight * head probability)."""
    weight: float
    """Weight of the head's probability."""


class HarmHead:
    """Words + sentence vector -> P(harm). Immutable after loading: thread-safe."""

    def __init__(self, path: Path = HARM_HEAD_PATH) -> None:
        """Load the weights now (tens of KB); HarmHeadFileError says what is wrong."""
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as exc:  # unreadable or not an npz: reported, not hidden
            raise HarmHeadFileError(f"cannot read harm head weights {path}: {exc}") from exc
        missing = [key for key in _REQUIRED if key not in arrays]
        if missing:
            raise HarmHeadFileError(f"harm head weights {path} lack {', '.join(missing)}")
        vocabulary, idf, word_coef = arrays["vocabulary"], arrays["idf"], arrays["word_coef"]
        if vocabulary.ndim != 1 or vocabulary.dtype.kind != "U" or len(vocabulary) == 0:
            raise HarmHeadFileError(f"harm head weights {path}: vocabulary must be a non-empty list of words")
        if idf.shape != vocabulary.shape or word_coef.shape != vocabulary.shape:
            raise HarmHeadFileError(
                f"harm head weights {path}: idf {idf.shape} and word_coef {word_coef.shape} must match the "
                f"vocabulary {vocabulary.shape}"
            )
        if arrays["vector_coef"].shape != (EMBEDDING_DIM,):
            raise HarmHeadFileError(
                f"harm head weights {path}: vector_coef {arrays['vector_coef'].shape} must have the "
                f"sentence vector's {EMBEDDING_DIM} entries"
            )
        if arrays["intercept"].shape != () or arrays["decision"].shape != (3,):
            raise HarmHeadFileError(f"harm head weights {path}: intercept must be a scalar, decision 3 numbers")
        numbers = ("idf", "word_coef", "vector_coef", "intercept", "decision")
        if not all(np.isfinite(arrays[key]).all() for key in numbers):
            raise HarmHeadFileError(f"harm head weights {path} hold non-finite numbers")
        self._index = {str(word): i for i, word in enumerate(vocabulary)}
        self._idf = idf.astype(np.float64)
        self._word_coef = word_coef.astype(np.float64)
        self._vector_coef = arrays["vector_coef"].astype(np.float32)
        self._intercept = float(arrays["intercept"])
        floor, margin, weight = (float(x) for x in arrays["decision"])
        self.decision = HarmHeadDecision(similarity_floor=floor, margin=margin, weight=weight)
        self.corpus_sha256 = str(arrays["corpus_sha256"])
        self.vocabulary_size = len(vocabulary)

    def word_logit(self, text: str) -> float:
        """The words' share of the log-odds (0 for a text with no known word)."""
        counts = Counter(self._index[w] for w in _TOKEN.findall(text.lower()) if w in self._index)
        if not counts:
            return 0.0
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter((1.0 + math.log(c) for c in counts.values()), dtype=np.float64, count=len(counts))
        weights = tf * self._idf[idx]
        return float(weights @ self._word_coef[idx] / np.linalg.norm(weights))

    def probabilities(self, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """P(harm) per text, float64; `vectors` are the texts' sentence vectors, (len(texts), 384)
        L2-normalised as `SentenceEncoder.encode` returns them."""
        if vectors.shape != (len(texts), EMBEDDING_DIM):
            raise ValueError(f"expected {len(texts)} vectors of {EMBEDDING_DIM}, got {vectors.shape}")
        words = np.fromiter((self.word_logit(t) for t in texts), dtype=np.float64, count=len(texts))
        logits = words + (vectors @ self._vector_coef).astype(np.float64) + self._intercept
        return 1.0 / (1.0 + np.exp(-logits))
