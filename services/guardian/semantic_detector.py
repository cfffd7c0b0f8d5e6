"""Semantic check for prompt injection, jailbreaks and harm (S1-S14): nearest labelled exemplars in
all-MiniLM-L6-v2 embedding space (the `expensive` detector).

Each text is cut into chunks of a few sentences (an injected instruction often hides inside a
longer benign text); every chunk of every text in a `detect_many` call is embedded in one batch.
For each chunk and label, the label's similarity is the mean of its `top_k` most similar exemplars
(`exemplar_bank.EXEMPLARS`). An injection/jailbreak label is reported when its similarity reaches
the family's threshold AND beats the most similar benign exemplars by `margin` (benign exemplars
with trigger words - "kill the process", "ignore the previous email" - pull such texts back). A
harm label is reported when its similarity reaches the harm threshold AND its lead over the benign
exemplars plus `harm_head_weight` x the harm head's probability (`harm_head.py`, a trained
classifier over the chunk's words) reaches `harm_margin`. The score maps the decision point to 0.5
and rises with the similarity (or the combined harm value), so the guardian's minimum score
(default 0.5) is the decision point. Injection thresholds were chosen on the evaluation set's dev
split (`load-tests/guardian_eval.py --tune`), the harm ones by cross-validation on that split
(`harm_head_training.py`), never on its eval split.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.guardian.exemplar_bank import EXEMPLARS
from services.guardian.findings import Finding, TextKind
from services.guardian.harm_head import HARM_HEAD_PATH, HarmHead
from services.guardian.sentence_encoder import SentenceEncoder

__all__ = ["SemanticThresholds", "SemanticSafetyDetector"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[A-Za-z][a-z']+\b")
#: Families whose best label alone is reported (texts rarely belong to two harm categories, and
#: neighbouring categories - S4/S12, injection/jailbreak - overlap in embedding space).
_FAMILIES = {"injection": "attack", "jailbreak": "attack"}
#: Chunks hold up to this many characters (about 35 words): short enough that an instruction hidden
#: in a longer benign text dominates its chunk, long enough to keep a request in one piece.
CHUNK_CHARS = 200
#: At most this many chunks per text are embedded (the first ones); the cost of a long response
#: stays bounded, at the price of not reading its tail.
MAX_CHUNKS = 12
#: The harm decision `harm_head_training.py` chose for the shipped `harm_head.npz` (dev split,
#: cross-validated); GuardianSettings' defaults repeat them.
HARM_FLOOR = 0.4
HARM_MARGIN = 0.39
HARM_HEAD_WEIGHT = 0.4


@dataclass(frozen=True, slots=True)
class SemanticThresholds:
    """Decision thresholds (cosine similarities), tuned on the dev split. The harm defaults are
    those `harm_head_training.py` chose with the shipped head (a test keeps them equal)."""

    injection: float = 0.44
    """Minimum similarity to injection/jailbreak exemplars."""
    harm: float = HARM_FLOOR
    """Minimum similarity to harm exemplars."""
    margin: float = 0.06
    """How much more similar than the nearest benign exemplars a text must be (injection,
    jailbreak)."""
    harm_margin: float = HARM_MARGIN
    """Least (harm similarity - benign similarity + harm_head_weight x the head's P(harm))."""
    harm_head_weight: float = HARM_HEAD_WEIGHT
    """Weight of the harm head's probability; 0 decides harm by the exemplars alone."""
    top_k: int = 2
    """Exemplars averaged per label."""


def is_prose(chunk: str) -> bool:
    """Whether a chunk is mostly words: keys, hashes, code and numbers carry no meaning the
    exemplars can match, and their embeddings land near arbitrary exemplars."""
    tokens = chunk.split()
    words = sum(1 for t in tokens if _WORD.match(t.strip("\"'(),.:;!?")))
    return words >= 3 and words * 2 >= len(tokens)


def split_chunks(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of chunks of whole sentences, each up to CHUNK_CHARS (a longer sentence
    is cut), at most MAX_CHUNKS."""
    spans: list[tuple[int, int]] = []
    start = None
    end = 0
    pos = 0
    pieces: list[tuple[int, int]] = []
    for m in _SENTENCE_END.finditer(text):
        pieces.append((pos, m.start()))
        pos = m.end()
    pieces.append((pos, len(text)))
    for s, e in pieces:
        if e <= s or not text[s:e].strip():
            continue
        while e - s > CHUNK_CHARS:  # an over-long sentence: hard cuts
            if start is not None:
                spans.append((start, end))
                start = None
            spans.append((s, s + CHUNK_CHARS))
            s += CHUNK_CHARS
        if start is not None and e - start > CHUNK_CHARS:
            spans.append((start, end))
            start = None
        if start is None:
            start = s
        end = e
    if start is not None:
        spans.append((start, end))
    return spans[:MAX_CHUNKS] or [(0, min(len(text), CHUNK_CHARS))]


class SemanticSafetyDetector:
    """Injection, jailbreak and harm (S1-S14) by nearest labelled exemplars."""

    name = "semantic-safety"
    version = "3"  # 2: round-2 exemplars; 3: harm decided with the trained harm head
    cost = "expensive"

    def __init__(
        self,
        encoder: SentenceEncoder | None = None,
        *,
        thresholds: SemanticThresholds | None = None,
        exemplars: Mapping[str, Sequence[str]] = EXEMPLARS,
        categories: Sequence[str] | None = None,
        harm_head_path: Path = HARM_HEAD_PATH,
    ) -> None:
        """`categories`: the labels to report (default every non-benign label of `exemplars`).
        `harm_head_path`: the harm head's weights, read on `load` or the first text when
        `thresholds.harm_head_weight` is above 0."""
        if "benign" not in exemplars:
            raise ValueError("the exemplars need a 'benign' list")
        # int8 by default: the default thresholds were tuned on the int8 encoder's vectors
        self.encoder = encoder or SentenceEncoder(int8=True)
        self.thresholds = thresholds or SemanticThresholds()
        self.exemplars = exemplars
        labels = [label for label in exemplars if label != "benign"]
        self.categories = tuple(categories) if categories is not None else tuple(labels)
        unknown = set(self.categories) - set(labels)
        if unknown:
            raise ValueError(f"no exemplars for categories {sorted(unknown)}")
        self._labels = tuple(labels) + ("benign",)
        self._bank: np.ndarray | None = None
        self._owner: np.ndarray | None = None
        self.harm_head_path = harm_head_path
        self._harm_head: HarmHead | None = None
        self._lock = threading.Lock()

    @property
    def detector_id(self) -> str:
        return f"{self.name}@{self.version}"

    def load(self) -> None:
        """Load the model, embed the exemplars and read the harm head now rather than on the first
        text."""
        self._bank_vectors()
        self._head()

    def _head(self) -> HarmHead | None:
        """The harm head, or None when its weight is 0 (then it is never read)."""
        if self.thresholds.harm_head_weight <= 0.0:
            return None
        with self._lock:
            if self._harm_head is None:
                self._harm_head = HarmHead(self.harm_head_path)
            return self._harm_head

    def harm_labels_mask(self) -> np.ndarray:
        """Boolean mask of the harm labels among `label_similarities`' columns."""
        return np.asarray([label.startswith("harm.") for label in self._labels])

    def _bank_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._bank is None:
                phrases = [p for label in self._labels for p in self.exemplars[label]]
                owner = [i for i, label in enumerate(self._labels) for _ in self.exemplars[label]]
                self._bank = self.encoder.encode(phrases)
                self._owner = np.asarray(owner)
            assert self._owner is not None
            return self._bank, self._owner

    def label_similarities(self, texts: Sequence[str]) -> list[tuple[list[tuple[int, int]], np.ndarray]]:
        """Per text: its chunk spans and a (chunks, labels) array of top-k mean similarities, with
        labels in `self._labels` order (benign last). Exposed for tuning."""
        return [(spans, table) for spans, table, _ in self.chunk_similarities(texts)]

    def chunk_similarities(
        self, texts: Sequence[str]
    ) -> list[tuple[list[tuple[int, int]], np.ndarray, np.ndarray]]:
        """`label_similarities` plus each chunk's sentence vector, (chunks, 384)."""
        bank, owner = self._bank_vectors()
        spans = [split_chunks(t) for t in texts]
        flat = [t[s:e] for t, sp in zip(texts, spans, strict=True) for s, e in sp]
        vectors = self.encoder.encode(flat)
        sims = vectors @ bank.T if flat else np.zeros((0, len(bank)), dtype=np.float32)
        k = self.thresholds.top_k
        per_label = np.empty((sims.shape[0], len(self._labels)), dtype=np.float32)
        for i in range(len(self._labels)):
            cols = sims[:, owner == i]
            kk = min(k, cols.shape[1])
            per_label[:, i] = np.sort(cols, axis=1)[:, -kk:].mean(axis=1)
        out = []
        row = 0
        for sp in spans:
            out.append((sp, per_label[row : row + len(sp)], vectors[row : row + len(sp)]))
            row += len(sp)
        return out

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        return self.detect_many([text], kind)[0]

    def detect_many(self, texts: Sequence[str], kind: TextKind) -> list[list[Finding]]:
        if not texts:
            return []
        th = self.thresholds
        wanted = {label: i for i, label in enumerate(self._labels) if label in self.categories}
        head = self._head() if any(label.startswith("harm.") for label in wanted) else None
        results: list[list[Finding]] = []
        for text, (spans, table, vectors) in zip(texts, self.chunk_similarities(texts), strict=True):
            prose = np.asarray([is_prose(text[s:e]) for s, e in spans])
            benign = table[:, -1]
            # The head's vote per chunk, the same for every harm label (it says harm or not; the
            # exemplars say which category). Only prose chunks are ever reported, so only they are scored.
            head_vote = np.zeros(len(spans))
            if head is not None and prose.any():
                head_vote[prose] = th.harm_head_weight * head.probabilities(
                    [text[s:e] for (s, e), p in zip(spans, prose, strict=True) if p], vectors[prose]
                )
            # family -> (uncapped value, finding): scores cap at 1.0, so two strong labels are told
            # apart by the value (the more similar exemplars win)
            best_of_family: dict[str, tuple[float, Finding]] = {}
            for label, i in wanted.items():
                attack = label in ("injection", "jailbreak")
                threshold = th.injection if attack else th.harm
                margin = th.margin if attack else th.harm_margin
                col = table[:, i]
                if attack:
                    ok = (col >= threshold) & (col - benign >= margin) & prose
                    # threshold -> 0.5, threshold + 0.15 -> ~0.95: a similarity scale, not a probability.
                    value = col - threshold
                else:
                    lead = col - benign + head_vote
                    ok = (col >= threshold) & (lead >= margin) & prose
                    # the combined value over its range (1 + weight) back on the similarity
                    # scale, so that a strong finding reaches the block threshold as before
                    value = (lead - margin) / (1.0 + th.harm_head_weight)
                if not ok.any():
                    continue
                best = int(np.argmax(np.where(ok, value, -1.0)))
                score = float(min(1.0, 0.5 + 3.0 * value[best]))
                if kind == "response" and label in ("injection", "jailbreak"):
                    score = min(score, 0.6)  # a reply quoting an attack is less certain than a prompt
                s, e = spans[best]
                finding = Finding(label, round(score, 4), self.detector_id, s, e)
                fam = _FAMILIES.get(label, "harm")
                if fam not in best_of_family or value[best] > best_of_family[fam][0]:
                    best_of_family[fam] = (float(value[best]), finding)
            results.append(sorted((f for _, f in best_of_family.values()), key=lambda f: f.start))
        return results
