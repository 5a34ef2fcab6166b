"""Remedies for gradient entanglement: normalized preference optimisation and sparse token weighting."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_objectives import pref_feature, tiny_llama

from tandem.data import collate
from tandem.objectives.dpo import DPO
from tandem.objectives.logprobs import sequence_logps
from tandem.objectives.normalized import Normalized, normalized_surrogate, split_sequences
from tandem.objectives.registry import build
from tandem.objectives.sparse_token import SparseToken, shared_mask, token_weights


def batch_fn(feats):
    return collate(feats, mode="pack", pad_id=0)


def strip(f):
    return {k: v for k, v in f.items() if not k.startswith("ref_")}


def sig(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- normalized

def test_normalized_surrogate_gradient_is_difference_of_unit_gradients():
    lw, ll = torch.tensor([-2.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    loss = normalized_surrogate(lw, ll, torch.tensor([4.0]), torch.tensor([0.5]), torch.tensor([2.0])).sum()
    assert float(loss) == pytest.approx(-2.0 * (-2.0 / 4.0 + 3.0 / 0.5))
    loss.backward()
    assert float(lw.grad) == pytest.approx(-2.0 / 4.0) and float(ll.grad) == pytest.approx(2.0 / 0.5)


def test_split_sequences_gives_the_same_logps_as_the_packed_batch():
    feats = [pref_feature([1, 2, 3], [5, 6, 7], [5, 8]), pref_feature([4, 1], [9, 10], [11, 12, 13])]
    model = tiny_llama(0)
    for mode, rows in (("pack", None), ("pack", 6), ("pad", None)):
        batch = collate(feats, mode=mode, pad_id=0, max_tokens_per_row=rows)
        with torch.no_grad():
            packed, _ = sequence_logps(model, batch, 4)
            single = torch.cat([sequence_logps(model, one, 1)[0] for one in split_sequences(batch, 4)])
        assert torch.allclose(packed, single, atol=1e-5), mode


def test_normalized_objective_value_and_norms_by_direct_autograd():
    model = tiny_llama(0)
    f = pref_feature([1, 2, 3, 4], [5, 6, 7, 8], [5, 6, 7, 8, 9, 10])
    obj = Normalized(beta=0.5, rescale=False)
    feats = [{**f, "ref_chosen_logp": -20.0, "ref_rejected_logp": -30.0}]
    loss, m = obj(model, batch_fn(feats))
    params = list(model.parameters())
    s, _ = sequence_logps(model, batch_fn([f]), 2)
    gw = torch.cat([g.reshape(-1) for g in torch.autograd.grad(s[0], params, retain_graph=True)])
    gl = torch.cat([g.reshape(-1) for g in torch.autograd.grad(s[1], params)])
    h = (float(s[0]) + 20.0) - (float(s[1]) + 30.0)
    expected = -sig(-0.5 * h) * (float(s[0]) / float(gw.norm()) - float(s[1]) / float(gl.norm()))
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert m["grad/norm_chosen"] == pytest.approx(float(gw.norm()), rel=1e-4)
    assert m["grad/cosine"] == pytest.approx(float(gw @ gl / (gw.norm() * gl.norm())), rel=1e-4)
    assert m["grad/frac_chosen_falls"] == float(gw @ gl > gw @ gw)
    # the engine's backward of the returned loss gives -c (u_w - u_l)
    loss.backward()
    got = torch.cat([p.grad.reshape(-1) for p in params])
    want = -sig(-0.5 * h) * (gw / gw.norm() - gl / gl.norm())
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))


def sgd_deltas(obj, feature, lr: float, steps: int, seed: int = 0) -> tuple[float, float]:
    """Change of (log pi(y_w), log pi(y_l)) after ``steps`` plain SGD steps on one pair."""
    model = tiny_llama(seed)
    feats = obj.prepare(model, [feature], batch_fn)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def logps():
        with torch.no_grad():
            return sequence_logps(model, batch_fn([strip(feats[0])]), 2)[0].tolist()

    before = logps()
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = obj(model, batch_fn(feats))
        loss.backward()
        opt.step()
    after = logps()
    return after[0] - before[0], after[1] - before[1]


# Found offline by a search over seeds 0-3, lr {0.01, 0.05} and three pair shapes: the rejected response is the
# chosen one plus two tokens, so its gradient is larger and points along the chosen one; DPO then lowers both
# log-probs (seed 0, lr 0.05, 5 steps: about -0.09 and -1.6), the normalized update raises the chosen one.
ENTANGLED = pref_feature([1, 2, 3, 4], [5, 6, 7, 8], [5, 6, 7, 8, 9, 10])


def test_dpo_lowers_both_log_probs_where_normalized_does_not():
    dw, dl = sgd_deltas(DPO(beta=0.1), ENTANGLED, lr=0.05, steps=5)
    assert dw < -0.02 and dl < -0.5, (dw, dl)  # gradient entanglement: the chosen log-prob falls too
    nw, nl = sgd_deltas(Normalized(beta=0.1), ENTANGLED, lr=0.05, steps=5)
    assert nw > 0.5 and nl < -0.5, (nw, nl)


def test_normalized_without_beta_needs_no_reference_and_registry_builds_it():
    obj = build("normalized", beta=None)
    f = pref_feature([1, 2], [5, 6], [5, 7])
    assert obj.prepare(None, [f], batch_fn) == [f]
    loss, m = obj(tiny_llama(0), batch_fn([f]))
    assert torch.isfinite(loss) and "rewards/margin" not in m
    with pytest.raises(KeyError, match="ref_chosen_logp"):
        Normalized(beta=0.1)(tiny_llama(0), batch_fn([f]))
    with pytest.raises(ValueError, match="beta"):
        build("normalized", beta=0.0)


# ---------------------------------------------------------------- sparse token

def test_shared_mask_uses_matching_blocks():
    # substitution: positions 0, 2, 3 shared
    assert shared_mask([5, 6, 7, 2], [5, 9, 7, 2]) == ([True, False, True, True], [True, False, True, True])
    # insertion: the shifted suffix is still shared
    assert shared_mask([5, 7, 2], [5, 9, 7, 2]) == ([True, True, True], [True, False, True, True])


def test_token_weights_follow_the_sequence_order():
    # two pairs in row-major order: seq 0 (chosen 0), seq 2 (rejected 0), seq 1 (chosen 1), seq 3 (rejected 1)
    ids = [5, 6, 7, 5, 9, 7, 1, 2, 1, 3]
    seqs = [0, 0, 0, 2, 2, 2, 1, 1, 3, 3]
    assert token_weights(ids, seqs, 2) == [0, 1, 0, 0, 1, 0, 0, 1, 0, 1]
    assert token_weights(ids, seqs, 2, shared_weight=0.25) == [0.25, 1, 0.25, 0.25, 1, 0.25, 0.25, 1, 0.25, 1]


class FixedTokens(SparseToken):
    """SparseToken with the policy's per-token log-probs given directly."""

    def __init__(self, logps, seqs, ids, **kw):
        super().__init__(**kw)
        self.t = (torch.tensor(logps, requires_grad=True), torch.tensor(seqs), torch.tensor(ids))

    def _tokens(self, model, batch):
        return self.t


def test_sparse_token_loss_by_hand():
    # chosen [5, 6, 7], rejected [5, 9, 7]: only the middle tokens differ
    obj = FixedTokens([-1.0, -2.0, -0.5, -1.0, -3.0, -0.7], [0, 0, 0, 1, 1, 1], [5, 6, 7, 5, 9, 7], beta=0.5)
    batch = {"ref_chosen_logp": torch.tensor([-2.5]), "ref_rejected_logp": torch.tensor([-2.0])}
    loss, m = obj(None, batch)
    h = (-2.0 - -2.5) - (-3.0 - -2.0)  # = 1.5: only the differing tokens count
    assert float(loss) == pytest.approx(-math.log(sig(0.5 * h)))
    assert m["rewards/margin"] == pytest.approx(0.5 * h)
    assert m["chosen_logp"] == pytest.approx(-3.5) and m["rejected_logp"] == pytest.approx(-4.7)
    assert m["token_weight/chosen"] == pytest.approx(1 / 3)
    loss.backward()
    g = obj.t[0].grad
    d = 0.5 * sig(-0.5 * h)  # d loss / d h = -beta sigmoid(-beta h)
    assert g.tolist() == pytest.approx([0.0, -d, 0.0, 0.0, d, 0.0])


def test_sparse_token_on_a_model_prepare_and_gradient_flow():
    model = tiny_llama(0)
    feats = [pref_feature([1, 2, 3], [5, 6, 7, 8], [5, 9, 7, 8]), pref_feature([4, 1], [10, 11], [12, 11, 13])]
    obj = build("sparse_token", beta=0.1)
    prepared = obj.prepare(model, feats, batch_fn)
    # reference = weighted sums at the start: the margin starts at zero
    loss, m = obj(model, batch_fn(prepared))
    assert m["rewards/margin"] == pytest.approx(0.0, abs=1e-5)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    # pair 0 by hand: only token 6 (chosen) and token 9 (rejected) carry weight
    with torch.no_grad():
        tok = model(input_ids=torch.tensor([[1, 2, 3, 5, 6]]), use_cache=False).logits[0, -2].log_softmax(-1)[6]
    assert prepared[0]["ref_chosen_logp"] == pytest.approx(float(tok), abs=1e-5)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", ["normalized", "sparse_token"])
def test_remedies_train_in_the_engine(tmp_path, tiny_model_dir, synthetic_files, name):
    from pathlib import Path

    from test_engine_train import read_metrics, recipe

    from tandem.pipelines.train import train

    r = recipe(tmp_path, tiny_model_dir, synthetic_files, method="dpo",
               **{"objectives.preference": {"name": name, "beta": 0.1}, "schedule.max_steps_per_stage": 2,
                  "checkpoint.every": 0})
    train(r)
    val = [x for x in read_metrics(Path(r.output_dir)) if x["split"] == "val"]
    assert val and math.isfinite(val[-1]["preference/loss"])  # validation runs the objective under no_grad
    rows = [x for x in read_metrics(Path(r.output_dir)) if x["split"] == "train"]
    assert [x["step"] for x in rows] == [1, 2] and all(math.isfinite(x["loss"]) for x in rows)
    assert rows[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at step 1
    key = "grad/cosine" if name == "normalized" else "token_weight/chosen"
    assert 0 < rows[0][key] <= 1
