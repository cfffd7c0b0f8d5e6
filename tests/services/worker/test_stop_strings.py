"""Stop strings: never emitted, partial matches held back, earliest match wins."""

from __future__ import annotations

from services.worker.stop_strings import StopStringMatcher


def feed_all(matcher: StopStringMatcher, pieces: list[str]) -> list[str]:
    return [matcher.feed(p) for p in pieces]


def test_without_stops_text_passes_through() -> None:
    matcher = StopStringMatcher(())
    assert feed_all(matcher, ["a", "bc"]) == ["a", "bc"]
    assert matcher.flush() == ""
    assert not matcher.stopped


def test_stop_split_across_pieces_is_held_then_cut() -> None:
    matcher = StopStringMatcher(("END",))
    assert feed_all(matcher, ["hello E", "N", "D and more"]) == ["hello ", "", ""]
    assert matcher.stopped
    assert matcher.feed("ignored") == ""
    assert matcher.flush() == ""


def test_partial_match_completed_later_stops() -> None:
    matcher = StopStringMatcher(("END",))
    assert matcher.feed("the EN") == "the "
    assert matcher.feed("Ds") == ""
    assert matcher.stopped


def test_held_text_released_when_not_a_stop() -> None:
    matcher = StopStringMatcher(("END",))
    assert matcher.feed("the EN") == "the "
    assert matcher.feed("Xy") == "ENXy"
    assert not matcher.stopped


def test_flush_releases_held_text_at_the_end() -> None:
    matcher = StopStringMatcher(("\n\n",))
    assert matcher.feed("line\n") == "line"
    assert matcher.flush() == "\n"


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopStringMatcher(("zz", "b"))
    assert matcher.feed("aazzb") == "aa"
    matcher = StopStringMatcher(("zz", "b"))
    assert matcher.feed("abzz") == "a"


def test_stop_inside_one_piece_cuts_the_rest() -> None:
    matcher = StopStringMatcher(("###",))
    assert matcher.feed("answer### tail") == "answer"
    assert matcher.stopped


def test_longest_partial_match_is_held() -> None:
    matcher = StopStringMatcher(("abcd", "cx"))
    # "abc" is a prefix of "abcd" (3) and "c" of "cx" (1): hold 3.
    assert matcher.feed("xxabc") == "xx"
    assert matcher.feed("d") == ""
    assert matcher.stopped


def test_text_fed_without_matching_is_released_unsearched() -> None:
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("a E") == "a "  # "E" may start "END": held
    assert matcher.feed("ND b", match=False) == "END b"  # min_tokens not reached: released as it is
    assert not matcher.stopped
    assert matcher.feed(" c END d") == " c "
    assert matcher.stopped
