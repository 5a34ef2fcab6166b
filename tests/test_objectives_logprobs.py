"""sequence_logps / token_logps on a tiny Llama against the direct computation from full logits."""

from __future__ import annotations

import pytest
import torch
from helpers_objectives import IGNORE, direct_logp, make_batch, tiny_llama

from tandem.objectives import sequence_logps
from tandem.objectives.logprobs import token_logps

# (input_ids, labels): prompt tokens unlabelled, response tokens labelled (the first token never is)
SEQS = [
    ([5, 9, 11, 3, 7, 2], [IGNORE, IGNORE, IGNORE, 3, 7, 2]),
    ([6, 1, 4, 8], [IGNORE, IGNORE, 4, 8]),
    ([12, 13, 14, 15, 16], [IGNORE, 13, IGNORE, 15, 16]),  # labels need not be contiguous
]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(0).eval()


@pytest.fixture(scope="module")
def expected(model):
    return [direct_logp(model, ids, lab) for ids, lab in SEQS]


@pytest.mark.parametrize(
    "mode, rows",
    [
        ("pack", None),  # all three back to back in one row, position_ids restarting, no attention mask
        ("pack", [[0, 1], [2]]),  # two sequences in row 0; row 1 padded at the end
        ("pad", None),  # one sequence per row, right padding, attention_mask
    ],
)
def test_sequence_logps_equal_full_logits(model, expected, mode, rows):
    batch = make_batch(SEQS, mode, rows=rows)
    assert ("attention_mask" in batch) == (mode == "pad")
    s, n = sequence_logps(model, batch, num_seqs=3)
    assert s.shape == n.shape == (3,)
    for i, (lp, count) in enumerate(expected):
        assert float(s[i]) == pytest.approx(lp, abs=1e-4)
        assert int(n[i]) == count
    assert n.tolist() == [3, 2, 3]


def test_packed_sequences_do_not_see_each_other(model, expected):
    # Same two sequences in the other order: each one's log-prob does not depend on its neighbour.
    batch = make_batch([SEQS[1], SEQS[0]], "pack")
    s, _ = sequence_logps(model, batch)  # num_seqs inferred from seq_ids
    assert float(s[0]) == pytest.approx(expected[1][0], abs=1e-4)
    assert float(s[1]) == pytest.approx(expected[0][0], abs=1e-4)


def test_token_logps_order_and_sequence_index(model):
    batch = make_batch(SEQS[:2], "pack")
    lp, seq = token_logps(model, batch)
    assert seq.tolist() == [0, 0, 0, 1, 1]  # row-major order of labelled positions
    ids, lab = SEQS[1]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    manual = torch.log_softmax(logits, -1)[[1, 2], [4, 8]]  # tokens 4 and 8 predicted at positions 1 and 2
    assert torch.allclose(lp[3:], manual, atol=1e-4)


def test_gradients_flow():
    model = tiny_llama(1)
    s, _ = sequence_logps(model, make_batch(SEQS, "pack"), num_seqs=3)
    s.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
