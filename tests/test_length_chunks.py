"""Padding-aware chunking of length-sorted rows (trainables/inference.py): exact, bounded, complete."""
from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from trainables.inference import length_chunks, predict_logits


def cost(lengths, chunks, pass_cost):
    return sum((end - start) * lengths[end - 1] + pass_cost for start, end in chunks)


def brute_force(lengths, max_rows, pass_cost):
    """The cheapest cut of all 2^(n-1) cuts."""
    n, best = len(lengths), None
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        chunks = list(zip(bounds, bounds[1:]))
        if all(end - start <= max_rows for start, end in chunks):
            best = min(best, cost(lengths, chunks, pass_cost)) if best is not None else cost(lengths, chunks, pass_cost)
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=9), st.integers(1, 9), st.sampled_from([0, 4, 32, 1000]))
def test_the_cut_is_the_cheapest_and_covers_every_row_once(lengths, max_rows, pass_cost):
    lengths = sorted(lengths)
    chunks = length_chunks(lengths, max_rows, pass_cost)
    assert [i for start, end in chunks for i in range(start, end)] == list(range(len(lengths)))
    assert all(0 < end - start <= max_rows for start, end in chunks)
    assert cost(lengths, chunks, pass_cost) == brute_force(lengths, max_rows, pass_cost)


def test_equal_lengths_run_in_full_chunks_and_mixed_ones_are_cut_by_length():
    assert len(length_chunks([64] * 20, 8)) == 3  # as few passes as max_rows allows
    assert length_chunks([64] * 16, 8) == [(0, 8), (8, 16)]
    # tweets-like: short ones together, the long ones apart (one pass of 8 would pad all to 49)
    assert length_chunks([10, 12, 15, 20, 25, 30, 40, 49], 8, 32) == [(0, 3), (3, 6), (6, 8)]
    assert length_chunks([10, 12, 15, 20, 25, 30, 40, 49], 8, 10_000) == [(0, 8)]
    assert length_chunks([], 8) == []


def test_predict_logits_in_chunks_equals_one_row_at_a_time():
    torch.manual_seed(0)
    embed, head = torch.nn.Embedding(30, 8), torch.nn.Linear(8, 3)

    class Mean(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).float()
            return head((embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1))

    rng = np.random.default_rng(0)
    ids = [list(rng.integers(1, 30, int(n))) for n in rng.integers(1, 40, 37)]
    model = Mean()
    one_by_one = np.concatenate([predict_logits(model, [row], 0) for row in ids])
    assert np.abs(predict_logits(model, ids, 0, batch_size=8) - one_by_one).max() < 1e-5
