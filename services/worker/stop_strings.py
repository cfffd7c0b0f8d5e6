"""Holds generated text back until it is certain not to be part of a stop string.

Text that ends in a prefix of a stop string is kept until the next text decides it: either the
stop string completes (generation ends and the stop string is never emitted) or it does not (the
held text is released). Any stop match must begin in the held-back text, because a suffix that
could start one is always held, so only the pending text needs searching.

Text fed with `match=False` (a sequence's first `min_tokens` tokens, as vLLM does it) is never
searched and never held: it is released at once, and a later stop string can only match text fed
after it.
"""

from __future__ import annotations

__all__ = ["StopStringMatcher"]


class StopStringMatcher:
    """Feed text pieces in order; get back the text that is safe to emit."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False
        """True once a stop string matched; nothing more is emitted after that."""

    def feed(self, text: str, *, match: bool = True) -> str:
        """Add `text`; return what may be emitted now (possibly empty). `match=False`: the text
        (and anything held) is released unsearched."""
        if self.stopped or not text:
            return ""
        if not self._stops:
            return text
        if not match:
            released, self._pending = self._pending + text, ""
            return released
        pending = self._pending + text
        cut = min((i for i in (pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return pending[:cut]
        hold = self._partial_match_length(pending)
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold]

    def flush(self) -> str:
        """Generation ended without a stop string: release whatever was held back."""
        if self.stopped:
            return ""
        rest, self._pending = self._pending, ""
        return rest

    def _partial_match_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:length]):
                    best = length
                    break
        return best
