"""The harm head's training: the shipped weights are what the script produces from the current
bank, extra texts and dev split; nothing of the held-out eval split is trained on; the decision
rule keeps the benign FPR caps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.guardian.exemplar_bank import EXEMPLARS
from services.guardian.harm_head import HARM_HEAD_PATH, HarmHead
from services.guardian.harm_head_training import (
    EVAL_SET,
    MAX_DEV_FPR,
    MAX_EXTRA_FPR,
    GridPoint,
    TrainingCorpus,
    build_corpus,
    choose_decision,
    encode,
    fit_head,
    load_dev_split,
    probabilities,
)
from services.guardian.harm_taxonomy import HARM_NAMES
from services.guardian.harm_training_texts import BENIGN_TEXTS, HARMFUL_TEXTS


@pytest.fixture(scope="module")
def corpus() -> TrainingCorpus:
    return build_corpus(load_dev_split())


def test_the_shipped_weights_are_what_the_training_script_produces(corpus: TrainingCorpus) -> None:
    shipped = HarmHead()
    assert shipped.corpus_sha256 == corpus.sha256(), "training data changed: rerun harm_head_training"
    vectors = encode(corpus.texts)
    fitted = fit_head(corpus.texts, corpus.harm, vectors)
    with np.load(HARM_HEAD_PATH) as data:
        assert list(data["vocabulary"]) == list(fitted.vocabulary)
        np.testing.assert_allclose(data["idf"], fitted.idf, rtol=1e-12)
        # the int8 encoder's vectors may differ in the last bits on another CPU: close, not equal
        np.testing.assert_allclose(data["word_coef"], fitted.word_coef, atol=0.05)
        np.testing.assert_allclose(data["vector_coef"], fitted.vector_coef, atol=0.05)
        assert float(data["intercept"]) == pytest.approx(fitted.intercept, abs=0.05)
    sample = slice(0, None, 25)
    np.testing.assert_allclose(
        shipped.probabilities(corpus.texts[sample], vectors[sample]),
        probabilities(fitted, corpus.texts[sample], vectors[sample]),
        atol=0.01,
    )


def test_no_eval_split_text_is_trained_on(corpus: TrainingCorpus) -> None:
    rows = [json.loads(line) for line in EVAL_SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    eval_texts = {r["text"] for r in rows if r["split"] == "eval"}
    assert eval_texts  # the split exists, so the check means something
    assert not eval_texts & set(corpus.texts)
    assert not eval_texts & set(corpus.item_texts)
    assert all(r["split"] == "dev" for r in load_dev_split())


def test_the_corpus_has_bank_extra_and_dev_texts_labelled(corpus: TrainingCorpus) -> None:
    assert corpus.bank_size == sum(len(v) for v in EXEMPLARS.values())
    assert sum(corpus.harm[: corpus.bank_size]) == sum(len(v) for k, v in EXEMPLARS.items() if k.startswith("harm."))
    extra_harm = sum(h for h, dev in zip(corpus.item_harm, corpus.item_is_dev, strict=True) if not dev)
    assert extra_harm == sum(len(v) for v in HARMFUL_TEXTS.values())
    assert len(corpus.texts) == corpus.bank_size + len(corpus.item_of)


def test_extra_texts_cover_every_category_and_repeat_no_exemplar() -> None:
    assert set(HARMFUL_TEXTS) == set(HARM_NAMES)
    ours = [t for phrases in HARMFUL_TEXTS.values() for t in phrases] + list(BENIGN_TEXTS)
    bank = {p.strip().lower() for phrases in EXEMPLARS.values() for p in phrases}
    assert len(ours) == len({t.strip().lower() for t in ours})
    assert not {t.strip().lower() for t in ours} & bank


def _point(weight: float, margin: float, dev_f1: float, extra_f1: float, dev_fpr: float, extra_fpr: float) -> GridPoint:
    return GridPoint(0.4, weight, margin, (dev_f1 + extra_f1) / 2, dev_f1, dev_fpr, extra_f1, extra_fpr)


def test_the_decision_keeps_the_fpr_caps_then_ranks_by_the_worse_source() -> None:
    points = [
        _point(1.0, 0.5, 0.99, 0.95, MAX_DEV_FPR * 2, 0.0),  # best, but over the dev cap
        _point(1.0, 0.6, 0.97, 0.94, 0.0, MAX_EXTRA_FPR * 2),  # over the extra-texts cap
        _point(0.8, 0.5, 0.99, 0.80, 0.0, MAX_EXTRA_FPR),  # best overall, poor on the extra texts
        _point(0.6, 0.4, 0.88, 0.86, 0.0, MAX_EXTRA_FPR),  # best worse-source F1: chosen
        _point(0.0, 0.1, 0.70, 0.72, 0.0, 0.0),
    ]
    decision, report = choose_decision(points)
    assert (decision.weight, decision.margin) == (0.6, 0.4)
    assert report["cv_chosen"]["extra_f1"] == 0.86
    assert report["cv_without_head"]["dev_f1"] == 0.7
