"""Per-row token picking: greedy, temperature, top-k, top-p, seeds, logit bias, repetition,
presence and frequency penalties."""

from __future__ import annotations

import pytest
import torch

from services.worker.engine import SamplingParams
from shared.records import MIN_LOGPROB
from services.worker.sampling import (
    CANDIDATES,
    DRAW_BLOCK,
    RowSampling,
    SamplingTable,
    ban_tokens,
    draw_from_weights,
    filter_top_k_top_p,
    make_generator,
    pick_next_tokens,
    raw_logprobs,
)

CPU = torch.device("cpu")
VOCAB = 50


def table_for(*params: SamplingParams) -> SamplingTable:
    return SamplingTable([RowSampling(p, make_generator(p, CPU)) for p in params], VOCAB, CPU)


def logits_with_favourite(favourite: int, rows: int = 1) -> torch.Tensor:
    logits = torch.linspace(-1.0, 1.0, VOCAB).repeat(rows, 1)
    logits[:, favourite] = 5.0
    return logits


def test_greedy_rows_take_the_argmax() -> None:
    logits = torch.stack([logits_with_favourite(3)[0], logits_with_favourite(7)[0]])
    tokens = pick_next_tokens(logits, table_for(SamplingParams(), SamplingParams()), None)
    assert tokens.tolist() == [3, 7]


def test_top_k_one_is_greedy_even_when_sampling() -> None:
    logits = logits_with_favourite(11, rows=1)
    logits[0, 12] = 4.99  # a close second that plain sampling would often pick at temperature 2
    params = SamplingParams(temperature=2.0, top_k=1)
    picks = {pick_next_tokens(logits, table_for(params), None).item() for _ in range(30)}
    assert picks == {11}


def test_small_top_p_keeps_only_the_top_token() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 5] = 3.0  # about 29% of the mass, the most likely token
    params = SamplingParams(temperature=1.0, top_p=0.1)
    picks = {pick_next_tokens(logits, table_for(params), None).item() for _ in range(30)}
    assert picks == {5}


def test_full_sampling_spreads_over_the_vocabulary() -> None:
    logits = torch.zeros(1, VOCAB)
    params = SamplingParams(temperature=1.0, seed=1)
    table = table_for(params)
    picks = {pick_next_tokens(logits, table, None).item() for _ in range(100)}
    assert len(picks) > 20


def test_same_seed_same_tokens_whatever_the_neighbours() -> None:
    seeded = SamplingParams(temperature=1.0, seed=1234)
    logits = torch.zeros(1, VOCAB)
    alone_table = table_for(seeded)
    alone = [pick_next_tokens(logits, alone_table, None).item() for _ in range(10)]
    batch_table = table_for(SamplingParams(temperature=1.0), seeded, SamplingParams())
    batched = [pick_next_tokens(torch.zeros(3, VOCAB), batch_table, None)[1].item() for _ in range(10)]
    assert alone == batched
    other = table_for(SamplingParams(temperature=1.0, seed=99))
    assert [pick_next_tokens(logits, other, None).item() for _ in range(10)] != alone


def test_repetition_penalty_only_touches_its_own_row() -> None:
    logits = torch.stack([logits_with_favourite(3)[0], logits_with_favourite(3)[0]])
    logits[:, 4] = 4.0  # runner-up
    seen = torch.zeros(2, VOCAB, dtype=torch.bool)
    seen[:, 3] = True
    table = table_for(SamplingParams(repetition_penalty=2.0), SamplingParams())
    assert pick_next_tokens(logits, table, seen).tolist() == [4, 3]


def test_negative_logits_are_penalised_downwards() -> None:
    logits = torch.full((1, VOCAB), -10.0)
    logits[0, 1] = -1.0
    logits[0, 2] = -1.5
    seen = torch.zeros(1, VOCAB, dtype=torch.bool)
    seen[0, 1] = True
    table = table_for(SamplingParams(repetition_penalty=2.0))  # -1.0 becomes -2.0 < -1.5
    assert pick_next_tokens(logits, table, seen).item() == 2


def test_logit_bias_bans_and_forces_tokens_on_its_own_row_only() -> None:
    logits = torch.stack([logits_with_favourite(3)[0]] * 3)
    table = table_for(
        SamplingParams(logit_bias=((3, -100.0),)),  # banned: the runner-up wins
        SamplingParams(),
        SamplingParams(temperature=1.0, logit_bias=((17, 100.0),), seed=5),  # forced, even sampling
    )
    before = logits.clone()
    picks = pick_next_tokens(logits, table, None)
    assert picks[0].item() == VOCAB - 1 and picks[1].item() == 3 and picks[2].item() == 17
    assert torch.equal(logits, before)  # not in place: the caller's logits are left alone


def test_presence_penalty_subtracts_once_per_generated_token_and_only_on_its_row() -> None:
    logits = torch.stack([logits_with_favourite(3)[0]] * 3)
    logits[:, 4] = 4.0  # runner-up, 1.0 below the favourite
    table = table_for(SamplingParams(presence_penalty=1.5), SamplingParams(), SamplingParams(presence_penalty=0.5))
    # The favourite was generated three times by every row: presence counts it once (5 - 1.5 < 4),
    # not three times; 0.5 leaves it ahead; the row without a penalty is untouched.
    outputs = [[3, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert pick_next_tokens(logits, table, None, outputs).tolist() == [4, 3, 3]


def test_frequency_penalty_grows_with_each_occurrence() -> None:
    logits = torch.stack([logits_with_favourite(3)[0]] * 2)
    logits[:, 4] = 4.0
    table = table_for(SamplingParams(frequency_penalty=0.4), SamplingParams(frequency_penalty=0.4))
    # Twice: 5 - 0.8 = 4.2 stays ahead of 4.0; three times: 5 - 1.2 = 3.8 falls behind it.
    assert pick_next_tokens(logits, table, None, [[3, 3, 7], [3, 3, 3]]).tolist() == [3, 4]


def test_negative_penalties_favour_what_was_generated() -> None:
    logits = logits_with_favourite(3)
    table = table_for(SamplingParams(presence_penalty=-2.0, frequency_penalty=-1.0))
    # Token 9 (logit about -0.63): generated twice it gains 2 + 2 x 1 = 4 (3.37, still behind the
    # favourite's 5); four times, 6 (5.37, ahead).
    assert pick_next_tokens(logits, table, None, [[9, 9]]).item() == 3
    assert pick_next_tokens(logits, table, None, [[9, 9, 9, 9]]).item() == 9


def test_output_penalties_need_outputs_and_leave_logits_alone_unless_in_place() -> None:
    logits = logits_with_favourite(3)
    logits[0, 4] = 4.0  # runner-up, 1.0 below the favourite
    before = logits.clone()
    table = table_for(SamplingParams(presence_penalty=2.0))
    assert pick_next_tokens(logits, table, None).item() == 3  # no outputs given: nothing counted
    assert pick_next_tokens(logits, table, None, [[]]).item() == 3  # nothing generated yet
    assert pick_next_tokens(logits, table, None, [None]).item() == 3
    assert pick_next_tokens(logits, table, None, [[3]]).item() == 4
    assert torch.equal(logits, before)


def test_output_penalties_apply_before_the_temperature_and_filters() -> None:
    # Two tokens, 2 apart: at temperature 0.5 without penalty the favourite takes ~98 %; a presence
    # penalty of 2 on it makes them equal, so both come up.
    logits = torch.full((1, VOCAB), -30.0)
    logits[0, 3], logits[0, 4] = 2.0, 0.0
    table = table_for(SamplingParams(temperature=0.5, top_k=5, presence_penalty=2.0, seed=3))
    picks = [pick_next_tokens(logits, table, None, [[3]]).item() for _ in range(200)]
    assert set(picks) == {3, 4}
    assert 60 < picks.count(4) < 140


def test_draws_follow_the_softmax_probabilities() -> None:
    # Three tokens carry 50 / 30 / 20 % of the mass, the rest none (after top_k=3): the share of
    # each in 4,000 draws must match, and a token outside the top 3 must never come up.
    logits = torch.full((1, VOCAB), -30.0)
    logits[0, 4], logits[0, 9], logits[0, 17] = torch.tensor([0.5, 0.3, 0.2]).log()
    table = table_for(SamplingParams(temperature=1.0, top_k=3, seed=7))
    draws = [pick_next_tokens(logits, table, None).item() for _ in range(4000)]
    shares = {token: draws.count(token) / len(draws) for token in set(draws)}
    assert set(shares) == {4, 9, 17}
    for token, expected in ((4, 0.5), (9, 0.3), (17, 0.2)):
        assert abs(shares[token] - expected) < 0.03, shares


def test_rows_sample_independently_in_one_batch() -> None:
    # Two sampled rows with opposite favourites: each row's draws follow its own logits.
    logits = torch.zeros(2, VOCAB)
    logits[0, 2] = 10.0
    logits[1, 40] = 10.0
    table = table_for(SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=1.0, seed=2))
    picks = [pick_next_tokens(logits, table, None).tolist() for _ in range(50)]
    assert sum(p == [2, 40] for p in picks) >= 45


def _kept_by_full_sort(scores: torch.Tensor, top_k: int, top_p: float) -> set[int]:
    """The reference: sort the whole vocabulary, cut at top_k, then at top_p (first always kept)."""
    ranked, order = scores.sort(descending=True)
    ranked[top_k:] = float("-inf")
    probs = ranked.softmax(dim=-1)
    keep = (probs.cumsum(dim=-1) - probs) <= top_p
    keep &= ranked > float("-inf")
    return set(order[keep].tolist())


def test_candidate_filter_keeps_exactly_what_a_full_sort_keeps() -> None:
    # A vocabulary larger than CANDIDATES, peaked rows (candidates suffice) and flat rows (the
    # full sort fallback), with and without top_k: the kept token sets must equal the reference.
    vocab = CANDIDATES * 4
    generator = torch.Generator().manual_seed(3)
    peaked = torch.randn(3, vocab, generator=generator) * 4
    flat = torch.randn(2, vocab, generator=generator) * 0.01
    scores = torch.cat([peaked, flat])
    settings = [(vocab, 0.9), (40, 0.95), (vocab, 0.5), (vocab, 0.9), (2000, 0.99)]
    top_k = torch.tensor([k for k, _ in settings])
    top_p = torch.tensor([p for _, p in settings])
    ranked, order = filter_top_k_top_p(scores, top_k, top_p)
    for row, (k, p) in enumerate(settings):
        kept = set(order[row][ranked[row] > float("-inf")].tolist())
        assert kept == _kept_by_full_sort(scores[row].clone(), k, p), row
        assert kept  # the best token is always kept


def test_in_place_draws_the_same_tokens_and_only_then_overwrites() -> None:
    """The engine lets sampling overwrite its logits; the tokens must not change for it."""
    params = [SamplingParams(temperature=0.7, seed=7), SamplingParams(temperature=1.3, seed=8)]
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(3))
    kept = logits.clone()
    copied_table, in_place_table = table_for(*params), table_for(*params)
    for _ in range(20):
        expected = pick_next_tokens(logits, copied_table, None)
        assert torch.equal(logits, kept)  # untouched by default
        scratch = logits.clone()
        assert torch.equal(pick_next_tokens(scratch, in_place_table, None, in_place=True), expected)
    assert not torch.equal(scratch, kept)


def test_two_level_draws_pick_what_one_cumulative_sum_picks_and_never_a_zero_weight() -> None:
    """Over blocks of DRAW_BLOCK tokens (the last one shorter, some all zero), the two-level draw
    picks the token that inverting the whole row's cumulative distribution picks for the same
    uniform number, and never a token of weight 0."""
    vocab = 3 * DRAW_BLOCK + 17
    generator = torch.Generator().manual_seed(5)
    weights = torch.rand(4, vocab, generator=generator)
    weights[weights < 0.7] = 0.0  # zero-weight tokens everywhere
    weights[1, DRAW_BLOCK : 2 * DRAW_BLOCK] = 0.0  # a whole block of none
    weights[2, : 3 * DRAW_BLOCK] = 0.0  # only the short last block
    weights[3, :] = 0.0
    weights[3, [0, DRAW_BLOCK - 1, vocab - 1]] = torch.tensor([0.2, 0.3, 0.5])  # block edges
    draws, same = 0, 0
    for seed in range(500):
        generators = [torch.Generator().manual_seed(seed * 4 + row) for row in range(4)]
        picks = draw_from_weights(weights.clone(), generators)
        # The reference, from generators in the same state: one cumulative sum over the row.
        uniform = torch.stack(
            [torch.rand((), generator=torch.Generator().manual_seed(seed * 4 + row)) for row in range(4)]
        )
        cdf = weights.cumsum(dim=-1)
        expected = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)[:, 0]
        assert bool((weights.gather(1, picks[:, None]) > 0).all()), picks
        draws += 4
        same += int((picks == expected).sum())
    assert same >= draws - 2  # a target on a rounding boundary may fall on either side


def test_raw_logprobs_are_taken_before_picking_changes_the_logits_and_only_for_rows_that_asked() -> None:
    asked = SamplingParams(temperature=0.5, logit_bias=((3, 100.0),), frequency_penalty=2.0, seed=1, logprobs=2)
    table = table_for(SamplingParams(), asked, SamplingParams(logprobs=0))
    logits = logits_with_favourite(7, rows=3)
    logits[2, 11] = -float("inf")  # a token the model rules out: clamped, never -inf on the wire
    expected = logits.log_softmax(dim=-1)
    raw = raw_logprobs(logits, table)
    assert raw is not None
    tokens = pick_next_tokens(logits, table, None, [None, [], None], in_place=True)
    assert int(tokens[1]) == 3  # the bias forced it
    rows = raw.for_tokens(torch.tensor([7, 3, 11]))
    assert rows[0] is None
    second, third = rows[1], rows[2]
    assert second is not None and third is not None
    # The bias and the temperature do not show: the model's own log-softmax.
    assert second.logprob == pytest.approx(float(expected[1, 3]))
    assert [t for t, _ in second.top] == [7, VOCAB - 1]
    assert [lp for _, lp in second.top] == pytest.approx([float(expected[1, 7]), float(expected[1, VOCAB - 1])])
    assert third.top == () and third.logprob == MIN_LOGPROB


def test_no_row_asking_for_logprobs_computes_nothing() -> None:
    assert raw_logprobs(logits_with_favourite(1, rows=2), table_for(SamplingParams(), SamplingParams())) is None


def test_banned_tokens_are_never_picked_greedy_or_sampled() -> None:
    table = table_for(SamplingParams(), SamplingParams(temperature=2.0, seed=3, top_p=0.9))
    for _ in range(20):
        logits = logits_with_favourite(7, rows=2)
        ban_tokens(logits, [(0, (7, VOCAB - 1)), (1, (7,))])
        tokens = pick_next_tokens(logits, table, None, None, in_place=True)
        assert int(tokens[0]) not in (7, VOCAB - 1) and int(tokens[1]) != 7
    untouched = logits_with_favourite(7)
    ban_tokens(untouched, [])
    assert torch.equal(untouched, logits_with_favourite(7))
