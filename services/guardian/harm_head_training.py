"""Trains the harm head (`harm_head.py`) and chooses how the semantic detector combines it with the
nearest exemplars; writes `harm_head.npz`. Seeded:

    .venv/bin/python -m services.guardian.harm_head_training [--out PATH] [--skip-overlap-check]

(about a minute on one core; prints the chosen decision and its cross-validated scores). The
int8 encoder's vectors depend on the CPU's quantized kernels (fbgemm on AVX-512/AVX2, oneDNN,
QNNPACK): on another CPU the same script gives coefficients up to about 0.5 apart (measured with
the oneDNN and QNNPACK engines: 0.34-0.82; the head's probabilities moved by p99 0.03-0.08, the
logistic regression being ill-conditioned in its correlated features, not its predictions).
So the weights file also holds the SHA-256 of the training vectors (`vectors_sha256`): where
this CPU's encoder reproduces them bit for bit, the weights must be reproduced exactly.

Training data, and only this (never the evaluation set's
held-out `eval` split):
* the exemplar bank (`exemplar_bank.EXEMPLARS`: `harm.*` phrases are harm, benign, injection and
  jailbreak phrases are not);
* the extra texts of `harm_training_texts.py`;
* the `dev` split of load-tests/data/guardian_eval/guardian_eval.jsonl, cut into the chunks the
  detector scores (its prose chunks; a chunk is harm when its text is labelled `harm.*`).

The head: a logistic regression (scikit-learn, lbfgs, `C=HEAD_C`), harm vs not harm, on two
L2-normalised vectors side by side: the words' TF-IDF (`TfidfVectorizer(sublinear_tf=True)`, word
unigrams) and the chunk's MiniLM vector (int8 encoder, as the detector runs it). Chosen by the
cross-validation below over words alone, words + vector (scale 0.25, 0.5, 1), bigrams and
character n-grams: the vector added about 0.03 F1, n-grams nothing beyond noise.

The decision (`harm_head.HarmHeadDecision`): a chunk is reported when its best harm label's
similarity reaches `similarity_floor` and (similarity - benign similarity + weight * P(harm))
reaches `margin`. Chosen by cross-validation over the dev texts AND the extra texts (5 folds, 3
seeded shuffles): the head is trained on the bank and four fifths of them and scores the fifth
it did not see; the exemplar similarities come from the detector as it runs. Both sources are
biased: dev flatters the exemplars (round 2 added exemplars written from dev misses), the extra
texts share the head's author. So the grid (`FLOORS` x `WEIGHTS` x `MARGINS`), restricted to
benign FPR <= `MAX_DEV_FPR` on dev and <= `MAX_EXTRA_FPR` on the extra texts (nearly all hard
negatives), is ranked by the harm F1 of the worse of the two sources, then F1 over all items.
The chosen values go into the weights file and are the defaults of `SemanticThresholds` and
GuardianSettings (a test keeps them equal).

Written beside the weights: the SHA-256 of the training corpus, so a test notices a bank, extra
texts or dev split that changed since the weights were made. The overlap check (fp32 MiniLM, as
the evaluation set's builder) refuses extra texts within cosine 0.8 of an eval text; it reads the
eval texts only for that similarity and prints none of them.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.guardian.exemplar_bank import EXEMPLARS
from services.guardian.harm_head import HARM_HEAD_PATH, HarmHeadDecision
from services.guardian.harm_training_texts import BENIGN_TEXTS, HARMFUL_TEXTS
from services.guardian.semantic_detector import is_prose, split_chunks

__all__ = ["HEAD_C", "TrainingCorpus", "FittedHead", "GridPoint", "build_corpus", "fit_head", "probabilities",
           "vectors_sha256", "main"]

EVAL_SET = Path(__file__).resolve().parents[2] / "load-tests" / "data" / "guardian_eval" / "guardian_eval.jsonl"
#: Inverse regularisation strength (dev cross-validation was flat between 10 and 100).
HEAD_C = 10.0
#: Benign false-positive rate allowed on dev: stricter than the 3 % target, because dev
#: under-estimated the eval FPR in every earlier round.
MAX_DEV_FPR = 0.01
#: The same on the extra benign texts, nearly all hard negatives (trigger words in safe requests)
#: and so harder than a typical benign mix.
MAX_EXTRA_FPR = 0.03
FOLDS = 5
SEEDS = (0, 1, 2)
FLOORS = (0.36, 0.40, 0.44, 0.48)
WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)
MARGINS = tuple(round(0.01 * i, 2) for i in range(0, 201))
#: The evaluation set's rule for texts written by the project: below this cosine to any eval text.
OVERLAP_LIMIT = 0.8


@dataclass(frozen=True, slots=True)
class TrainingCorpus:
    """The bank's phrases (always trained on), then the chunks of the cross-validated items: the dev
    texts and the extra texts. `item_of[i]` is the item of chunk `bank_size + i`."""

    texts: tuple[str, ...]
    harm: tuple[bool, ...]
    bank_size: int
    item_of: tuple[int, ...]
    item_texts: tuple[str, ...]
    item_harm: tuple[bool, ...]
    item_benign: tuple[bool, ...]
    """Label-free (a benign text; dev texts with other findings, such as PII, are neither)."""
    item_is_dev: tuple[bool, ...]

    def sha256(self) -> str:
        """Hash of the texts and labels the head is trained on."""
        payload = json.dumps([self.texts, self.harm], ensure_ascii=False).encode()
        return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True, slots=True)
class FittedHead:
    """What `harm_head.npz` holds besides the decision."""

    vocabulary: np.ndarray
    idf: np.ndarray
    word_coef: np.ndarray
    vector_coef: np.ndarray
    intercept: float


def load_dev_split(path: Path = EVAL_SET) -> list[dict[str, Any]]:
    """The dev records of the evaluation set (the eval split is dropped here, before anything)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r["split"] == "dev"]


def build_corpus(dev: Sequence[dict[str, Any]]) -> TrainingCorpus:
    """Bank phrases, then the prose chunks of the dev texts and of the extra texts."""
    texts: list[str] = []
    harm: list[bool] = []
    for label, phrases in EXEMPLARS.items():
        texts += phrases
        harm += [label.startswith("harm.")] * len(phrases)
    bank_size = len(texts)
    items = [(r["text"], any(c.startswith("harm.") for c in r["labels"]), not r["labels"], True) for r in dev]
    items += [(t, True, False, False) for phrases in HARMFUL_TEXTS.values() for t in phrases]
    items += [(t, False, True, False) for t in BENIGN_TEXTS]
    item_of: list[int] = []
    for i, (text, is_harm, _, _) in enumerate(items):
        for s, e in split_chunks(text):
            if is_prose(text[s:e]):  # the detector never scores other chunks
                texts.append(text[s:e])
                harm.append(is_harm)
                item_of.append(i)
    return TrainingCorpus(
        texts=tuple(texts),
        harm=tuple(harm),
        bank_size=bank_size,
        item_of=tuple(item_of),
        item_texts=tuple(t for t, _, _, _ in items),
        item_harm=tuple(h for _, h, _, _ in items),
        item_benign=tuple(b for _, _, b, _ in items),
        item_is_dev=tuple(d for _, _, _, d in items),
    )


def encode(texts: Sequence[str]) -> np.ndarray:
    """Sentence vectors as the detector computes them (int8 encoder, one torch thread)."""
    from services.guardian.sentence_encoder import SentenceEncoder

    return SentenceEncoder(int8=True, torch_threads=1).encode(list(texts))


def fit_head(texts: Sequence[str], harm: Sequence[bool], vectors: np.ndarray) -> FittedHead:
    """Logistic regression on [TF-IDF of the words, sentence vector] (scikit-learn: training only).
    Both parts are L2-normalised vectors, side by side at the same scale."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(sublinear_tf=True)
    words = vectorizer.fit_transform(list(texts))
    features = hstack([words, csr_matrix(vectors.astype(np.float64))]).tocsr()
    model = LogisticRegression(C=HEAD_C, max_iter=10_000).fit(features, np.asarray(harm))
    coef = model.coef_[0].astype(np.float64)
    return FittedHead(
        vocabulary=np.asarray(vectorizer.get_feature_names_out(), dtype=str),
        idf=vectorizer.idf_.astype(np.float64),
        word_coef=coef[: words.shape[1]],
        vector_coef=coef[words.shape[1] :],
        intercept=float(model.intercept_[0]),
    )


def probabilities(head: FittedHead, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    """P(harm) computed with scikit-learn's own TF-IDF (the run-time head must agree with it)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, vocabulary={str(w): i for i, w in enumerate(head.vocabulary)})
    vectorizer.idf_ = head.idf
    logits = vectorizer.transform(list(texts)) @ head.word_coef + vectors.astype(np.float64) @ head.vector_coef
    return 1.0 / (1.0 + np.exp(-(np.asarray(logits).ravel() + head.intercept)))


def out_of_fold_probabilities(corpus: TrainingCorpus, vectors: np.ndarray, seed: int) -> np.ndarray:
    """P(harm) of every item chunk from a head that did not see its item (trained on the bank and
    the other folds)."""
    from sklearn.model_selection import StratifiedKFold

    item_of = np.asarray(corpus.item_of)
    strata = np.asarray(corpus.item_harm) * 4 + np.asarray(corpus.item_benign) * 2 + np.asarray(corpus.item_is_dev)
    bank = np.arange(corpus.bank_size)
    out = np.zeros(len(item_of))
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    for train_items, test_items in folds.split(np.zeros(len(strata)), strata):
        train = np.concatenate([bank, corpus.bank_size + np.flatnonzero(np.isin(item_of, train_items))])
        test = np.flatnonzero(np.isin(item_of, test_items))
        head = fit_head([corpus.texts[i] for i in train], [corpus.harm[i] for i in train], vectors[train])
        test_rows = corpus.bank_size + test
        out[test] = probabilities(head, [corpus.texts[i] for i in test_rows], vectors[test_rows])
    return out


def exemplar_features(corpus: TrainingCorpus) -> tuple[np.ndarray, np.ndarray]:
    """Per item chunk: the best harm label's similarity and the benign similarity, as the detector
    computes them (int8 encoder, one torch thread)."""
    from services.guardian.semantic_detector import SemanticSafetyDetector
    from services.guardian.sentence_encoder import SentenceEncoder

    detector = SemanticSafetyDetector(SentenceEncoder(int8=True, torch_threads=1))
    labels = detector.harm_labels_mask()
    harm_sim, benign_sim = [], []
    for text, (spans, table) in zip(corpus.item_texts, detector.label_similarities(corpus.item_texts), strict=True):
        for (s, e), row in zip(spans, table, strict=True):
            if is_prose(text[s:e]):
                harm_sim.append(float(row[labels].max()))
                benign_sim.append(float(row[-1]))
    return np.asarray(harm_sim), np.asarray(benign_sim)


@dataclass(frozen=True, slots=True)
class GridPoint:
    """Cross-validated scores of one decision setting (means over the seeded shuffles)."""

    floor: float
    weight: float
    margin: float
    f1: float
    """Harm detection F1 over every item (dev and extra texts)."""
    dev_f1: float
    dev_fpr: float
    """Benign false-positive rate on the dev split's label-free texts."""
    extra_f1: float
    extra_fpr: float
    """The same on the extra benign texts (mostly hard negatives)."""


def _f1_fpr(hit: np.ndarray, y: np.ndarray, benign: np.ndarray) -> tuple[float, float]:
    tp, fp, fn = int((hit & y).sum()), int((hit & ~y).sum()), int((~hit & y).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1), float((hit & benign).sum() / max(benign.sum(), 1))


def grid_scores(corpus: TrainingCorpus, harm_sim: np.ndarray, benign_sim: np.ndarray,
                oof: Sequence[np.ndarray]) -> list[GridPoint]:  # fmt: skip
    """Every setting of the grid, scored on the items' out-of-fold probabilities."""
    item_of = np.asarray(corpus.item_of)
    y = np.asarray(corpus.item_harm)
    benign = np.asarray(corpus.item_benign)
    dev = np.asarray(corpus.item_is_dev)
    n = len(y)
    points = []
    for floor, weight, margin in itertools.product(FLOORS, WEIGHTS, MARGINS):
        scores = []
        for probs in oof:
            chunk_hit = (harm_sim >= floor) & (harm_sim - benign_sim + weight * probs >= margin)
            hit = np.zeros(n, dtype=bool)
            np.logical_or.at(hit, item_of, chunk_hit)
            overall = _f1_fpr(hit, y, benign)[0]
            scores.append((overall, *_f1_fpr(hit[dev], y[dev], benign[dev]), *_f1_fpr(hit[~dev], y[~dev], benign[~dev])))
        f1, dev_f1, dev_fpr, extra_f1, extra_fpr = (float(v) for v in np.mean(scores, axis=0))
        points.append(GridPoint(floor, weight, margin, f1, dev_f1, dev_fpr, extra_f1, extra_fpr))
    return points


def choose_decision(points: Sequence[GridPoint]) -> tuple[HarmHeadDecision, dict[str, Any]]:
    """Among settings whose benign FPRs stay within the caps (dev and extra texts): the best F1 on
    the worse of the two sources (dev flatters the exemplars, the extra texts share the head's
    author: the held-out text is neither), then the best F1 over all items, then the lowest
    benign FPR. Also returns the scores."""
    allowed = [p for p in points if p.dev_fpr <= MAX_DEV_FPR and p.extra_fpr <= MAX_EXTRA_FPR]
    chosen = max(allowed, key=lambda p: (min(p.dev_f1, p.extra_f1), p.f1, -(p.dev_fpr + p.extra_fpr)))
    without_head = max(
        (p for p in allowed if p.weight == 0.0), key=lambda p: (min(p.dev_f1, p.extra_f1), p.f1)
    )
    by_weight = {
        str(w): round(max((min(p.dev_f1, p.extra_f1) for p in allowed if p.weight == w), default=0.0), 4)
        for w in WEIGHTS
    }
    report = {
        "cv_chosen": _rounded(chosen),
        "cv_worse_source_f1_by_weight": by_weight,
        "cv_without_head": _rounded(without_head),
    }
    return HarmHeadDecision(similarity_floor=chosen.floor, margin=chosen.margin, weight=chosen.weight), report


def _rounded(point: GridPoint) -> dict[str, float]:
    return {k: round(v, 4) for k, v in asdict(point).items()}


def check_overlap(path: Path = EVAL_SET) -> float:
    """Highest cosine (fp32 MiniLM) between an extra training text and an eval text; SystemExit
    naming our texts (never the eval ones) when any reaches OVERLAP_LIMIT."""
    from services.guardian.sentence_encoder import SentenceEncoder

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    eval_texts = [r["text"] for r in rows if r["split"] == "eval"]
    ours = [t for phrases in HARMFUL_TEXTS.values() for t in phrases] + list(BENIGN_TEXTS)
    encoder = SentenceEncoder(int8=False, torch_threads=1)
    sims = encoder.encode(ours) @ encoder.encode(eval_texts).T
    worst = sims.max(axis=1)
    too_close = [ours[i] for i in np.flatnonzero(worst >= OVERLAP_LIMIT)]
    if too_close:
        raise SystemExit(f"extra training texts within cosine {OVERLAP_LIMIT} of an eval text: {too_close}")
    return float(worst.max())


def vectors_sha256(vectors: np.ndarray) -> str:
    """Fingerprint of the training vectors as float32 bytes: equal only where the encoder's
    kernels gave bit-identical results (same quantized engine and instruction set)."""
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()


def save(
    path: Path, head: FittedHead, decision: HarmHeadDecision, corpus_sha256: str, vectors_fingerprint: str
) -> None:
    np.savez_compressed(
        path,
        vocabulary=head.vocabulary,
        idf=head.idf,
        word_coef=head.word_coef,
        vector_coef=head.vector_coef,
        intercept=np.float64(head.intercept),
        decision=np.asarray([decision.similarity_floor, decision.margin, decision.weight], dtype=np.float64),
        corpus_sha256=np.asarray(corpus_sha256),
        vectors_sha256=np.asarray(vectors_fingerprint),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HARM_HEAD_PATH)
    parser.add_argument("--skip-overlap-check", action="store_true", help="skip the fp32 similarity check")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict[str, Any] = {}
    if not args.skip_overlap_check:
        report["extra_texts_max_cosine_to_eval"] = round(check_overlap(), 4)
    corpus = build_corpus(load_dev_split())
    vectors = encode(corpus.texts)
    oof = [out_of_fold_probabilities(corpus, vectors, seed) for seed in SEEDS]
    decision, scores = choose_decision(grid_scores(corpus, *exemplar_features(corpus), oof))
    head = fit_head(corpus.texts, corpus.harm, vectors)
    fingerprint = vectors_sha256(vectors)
    save(args.out, head, decision, corpus.sha256(), fingerprint)
    report |= {
        "out": str(args.out),
        "training_texts": len(corpus.texts),
        "harm_texts": sum(corpus.harm),
        "vocabulary": len(head.vocabulary),
        "decision": {"similarity_floor": decision.similarity_floor, "margin": decision.margin,
                     "weight": decision.weight},  # fmt: skip
        **scores,
        "corpus_sha256": corpus.sha256(),
        "vectors_sha256": fingerprint,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
