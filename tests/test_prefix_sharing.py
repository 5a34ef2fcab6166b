"""Prefix sharing (batching.prefix_sharing): the prompt once per pair (or per GRPO / RLOO group), with the same
log-probs, losses, gradients and training run as the unshared pack layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from helpers_recipe import base_raw, with_overrides

from tandem.config.recipe import LOGPROB_PAIR_OBJECTIVES, PREFIX_SHARING_OBJECTIVES, RecipeError
from tandem.data import collate, encode_all
from tandem.data.prefix import shared_length
from tandem.data.types import PreferenceExample, user
from tandem.objectives import OBJECTIVES, build, sequence_logps
from tandem.objectives.logprobs import additive_mask, compute_dtype
from tandem.objectives.reward import sequence_rewards

I = -100
# two pairs: prompt [5, 6, 7] then replies; pair 1 shares only [9] (its second token differs)
HAND = [
    {"chosen_input_ids": [5, 6, 7, 1, 2], "chosen_labels": [I, I, I, 1, 2],
     "rejected_input_ids": [5, 6, 7, 3], "rejected_labels": [I, I, I, 3]},
    {"chosen_input_ids": [9, 8, 4], "chosen_labels": [I, I, 4],
     "rejected_input_ids": [9, 6, 6, 4], "rejected_labels": [I, I, I, 4]},
]

PAIRS = [
    PreferenceExample(user("What is 2 + 2? Think about it and reply."), "It is 4.", "It is 5, I think."),
    PreferenceExample(user("Name a colour that the sky has."), "Blue.", "A colour is a thing that"),
    PreferenceExample(user("Say hi"), "hi", "hello there friend"),
    PreferenceExample(user("Count to three, please, slowly."), "One, two, three.", "Three."),
]


def test_hand_written_two_pairs_layout_mask_and_positions():
    assert shared_length(**dict(zip(("c_ids", "c_lab", "r_ids", "r_lab"), HAND[0].values()))) == 3
    b = collate(HAND, mode="pack", pad_id=0, prefix_sharing=True)
    # pair 0: prefix [5 6 7], chosen [1 2], rejected [7 3] (the prefix's last token again, at position 2);
    # pair 1: prefix [9], chosen [8 4], rejected [9 6 6 4] (k = 1: the rejected segment restarts at position 0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 2, 7, 3, 9, 8, 4, 9, 6, 6, 4]]
    assert b["labels"].tolist() == [[I, I, I, 1, 2, I, 3, I, I, 4, I, I, I, 4]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3, 0, 1, 2, 0, 1, 2, 3]]
    assert b["seq_ids"].tolist() == [[0, 0, 0, 0, 0, 2, 2, 1, 1, 1, 3, 3, 3, 3]]
    m = b["attention_mask"][0, 0].int()
    assert m.shape == (14, 14)
    expect0 = [  # rows: tokens 0..6 of pair 0; columns 0..6
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],  # rejected's copy of token 7: prompt tokens 5, 6 and itself
        [1, 1, 0, 0, 0, 1, 1],
    ]
    assert m[:7, :7].tolist() == expect0
    assert m[:7, 7:].sum() == 0 and m[7:, :7].sum() == 0  # pairs never see each other
    expect1 = [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],  # k = 1: the rejected sequence is a block of its own
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 1, 1],
    ]
    assert m[7:, 7:].tolist() == expect1


def test_rows_padding_and_refs():
    feats = [{**f, "ref_chosen_logp": -1.0 - i, "ref_rejected_logp": -2.0 - i} for i, f in enumerate(HAND)]
    b = collate(feats, mode="pack", pad_id=0, max_tokens_per_row=8, prefix_sharing=True)
    assert b["input_ids"].shape == (2, 7)  # blocks of 7 tokens each, one per row
    assert b["input_ids"][1].tolist() == [9, 8, 4, 9, 6, 6, 4]
    assert b["seq_ids"][1].tolist() == [1, 1, 1, 3, 3, 3, 3]
    assert b["ref_chosen_logp"].tolist() == [-1.0, -2.0] and b["ref_rejected_logp"].tolist() == [-2.0, -3.0]
    padded = collate(feats[:1] + [{**feats[1], "rejected_input_ids": [9, 6], "rejected_labels": [I, 6]}],
                     mode="pack", pad_id=0, max_tokens_per_row=8, prefix_sharing=True)
    assert padded["labels"][1, -2:].tolist() == [I, I] and padded["seq_ids"][1, -2:].tolist() == [-1, -1]
    assert padded["attention_mask"][1, 0, -1].tolist() == [False] * 5 + [True, True]  # padding: causal among itself


def test_sft_features_ignore_prefix_sharing_and_pad_mode_is_refused():
    sft = [{"input_ids": [1, 2, 3], "labels": [I, 2, 3]}]
    a = collate(sft, mode="pack", pad_id=0, prefix_sharing=True)
    b = collate(sft, mode="pack", pad_id=0)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="prefix_sharing needs mode 'pack'"):
        collate(HAND, mode="pad", pad_id=0, prefix_sharing=True)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    feats, _ = encode_all(tok, PAIRS, 64, "truncate")
    assert all(shared_length(f["chosen_input_ids"], f["chosen_labels"], f["rejected_input_ids"], f["rejected_labels"]) > 4
               for f in feats)
    return tiny_model_dir, tok, feats


def _fns(tok, rows):
    return [lambda fs, s=s: collate(fs, mode="pack", pad_id=tok.pad_token_id, max_tokens_per_row=rows, prefix_sharing=s)
            for s in (False, True)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("rows", [None, 48])
def test_sequence_logps_equal_unshared(tiny, attn, rows):
    model_dir, tok, feats = tiny
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn)
    plain, shared = _fns(tok, rows)
    assert shared(feats)["input_ids"].ne(tok.pad_token_id).sum() < plain(feats)["input_ids"].ne(tok.pad_token_id).sum()
    with torch.no_grad():
        a, na = sequence_logps(model, plain(feats), num_seqs=8)
        b, nb = sequence_logps(model, shared(feats), num_seqs=8)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert torch.equal(na, nb)
    # the rejected reply may not see the chosen one: opening the mask changes its log-prob
    leaky = shared(feats)
    leaky["attention_mask"] = torch.ones_like(leaky["attention_mask"]).tril_()
    with torch.no_grad():
        c, _ = sequence_logps(model, leaky, num_seqs=8)
    assert (c[4:] - a[4:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", LOGPROB_PAIR_OBJECTIVES)
def test_loss_and_gradients_equal_unshared(tiny, name):
    model_dir, tok, feats = tiny
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    plain, shared = _fns(tok, 64)
    objective = build(name)
    # the reference pass (DPO-family prepare) on the shared layout gives the unshared values
    ref_a, ref_b = objective.prepare(model, feats, plain), objective.prepare(model, feats, shared)
    for fa, fb in zip(ref_a, ref_b):
        for k in set(fa) - set(feats[0]):
            assert fb[k] == pytest.approx(fa[k], abs=1e-5)
    with torch.no_grad():  # move the policy off the reference so the loss is not at its start value
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    grads, losses = [], []
    for fn in (plain, shared):
        model.zero_grad()
        loss, metrics = objective(model, fn(ref_a))
        loss.backward()
        losses.append((float(loss.detach()), metrics))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[1][0] == pytest.approx(losses[0][0], abs=1e-5)
    for k, v in losses[0][1].items():
        assert losses[1][1][k] == pytest.approx(v, abs=1e-5), k
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_reward_model_scores_and_gradients_equal_unshared(tiny, attn):
    """The reward model reads each sequence's last hidden state: the shared layout gives the same rewards, loss and
    gradients; a mask that lets the rejected reply see the chosen one changes the rejected rewards."""
    model_dir, tok, feats = tiny
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, attn_implementation=attn)
    plain, shared = _fns(tok, 64)
    objective = build("reward")
    rewards, grads = [], []
    for fn in (plain, shared):
        model.zero_grad()
        batch = fn(feats)
        loss, metrics = objective(model, batch)
        loss.backward()
        with torch.no_grad():
            rewards.append(sequence_rewards(model, batch, 8))
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert rewards[0].std() > 1e-4  # the rewards differ between sequences: the test can see a wrong gather
    torch.testing.assert_close(rewards[1], rewards[0], atol=1e-5, rtol=0)
    assert grads[1][0] == pytest.approx(grads[0][0], abs=1e-6)
    for n in grads[0][1]:
        torch.testing.assert_close(grads[1][1][n], grads[0][1][n], atol=1e-5, rtol=1e-4, msg=n)
    leaky = shared(feats)
    leaky["attention_mask"] = torch.ones_like(leaky["attention_mask"]).tril_()
    with torch.no_grad():
        c = sequence_rewards(model, leaky, 8)
    assert (c[4:] - rewards[0][4:]).abs().max() > 1e-4


def test_mask_runs_in_the_compute_dtype(tiny):
    model_dir, tok, feats = tiny
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    assert compute_dtype(model) == torch.bfloat16
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(fp32) == torch.bfloat16
    assert compute_dtype(fp32) == torch.float32
    m = additive_mask(torch.tensor([[True, False]]), torch.bfloat16)
    assert m.dtype == torch.bfloat16 and m.tolist() == [[0.0, torch.finfo(torch.bfloat16).min]]
    plain, shared = _fns(tok, None)
    with torch.no_grad():
        a, _ = sequence_logps(model, plain(feats), num_seqs=8)
        b, _ = sequence_logps(model, shared(feats), num_seqs=8)
    torch.testing.assert_close(b, a, atol=0.1, rtol=0.02)  # bf16: same maths, different rounding


def test_every_listed_objective_is_registered():
    assert set(PREFIX_SHARING_OBJECTIVES) <= set(OBJECTIVES)


def _recipe(tmp_path, model_dir, files, method="dpo", **over):
    return with_overrides(base_raw(tmp_path, model_dir, files, method), over)


@pytest.mark.parametrize("method, why", [("sft", "trains no preference pairs"), ("ppo", "trains objective ppo")])
def test_refused_where_it_does_not_apply(tmp_path, tiny_model_dir, synthetic_files, method, why):
    with pytest.raises(RecipeError, match=f"batching.prefix_sharing: true applies to pair training.*{why}"):
        _recipe(tmp_path, tiny_model_dir, synthetic_files, method, **{"batching.prefix_sharing": True})
    with pytest.raises(RecipeError, match="prefix_sharing needs mode: pack"):
        _recipe(tmp_path, tiny_model_dir, synthetic_files, "dpo", **{"batching.prefix_sharing": True, "batching.mode": "pad"})
    _recipe(tmp_path, tiny_model_dir, synthetic_files, "hbat", **{"batching.prefix_sharing": True})  # SFT stages: plain
    _recipe(tmp_path, tiny_model_dir, synthetic_files, "reward", **{"batching.prefix_sharing": True})
    _recipe(tmp_path, tiny_model_dir, synthetic_files, "hbat-grpo", **{"batching.prefix_sharing": True})  # GRPO groups


def test_training_run_gives_the_same_weights(tmp_path, tiny_model_dir, synthetic_files):
    from tandem.pipelines.train import train

    out = {}
    for share in (False, True):
        r = _recipe(tmp_path / str(share), tiny_model_dir, synthetic_files, "dpo", **{
            "batching.prefix_sharing": share, "batching.max_tokens_per_row": 128, "schedule.max_steps_per_stage": 2,
            "data.val_size": 0, "checkpoint.every": 0, "checkpoint.stage_weights": False, "logging.report_to": []})
        train(r)
        out[share] = load_file(str(tmp_path / str(share) / "run" / "final" / "model.safetensors"))
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    moved = 0.0
    for k, v in out[False].items():
        torch.testing.assert_close(out[True][k], v, atol=1e-5, rtol=1e-4, msg=k)
        if k in start:
            moved = max(moved, float((v - start[k]).abs().max()))
    assert moved > 1e-4  # the runs trained


# one GRPO group: a prompt [5, 6, 7] and three completions, then a second group of one
GROUP = [{"input_ids": [5, 6, 7, 1, 2], "labels": [I, I, I, 1, 2], "group": 0},
         {"input_ids": [5, 6, 7, 3], "labels": [I, I, I, 3], "group": 0},
         {"input_ids": [5, 6, 7, 4, 4], "labels": [I, I, I, 4, 4], "group": 0},
         {"input_ids": [9, 8], "labels": [I, 8], "group": 1}]


def test_hand_written_group_layout_mask_and_positions():
    """By hand: the prompt once, completion 1 after it, completions 2 and 3 each from a copy of the prompt's last
    token (position 2), each seeing the prompt's first two tokens and itself only."""
    b = collate(GROUP, mode="pack", pad_id=0, max_tokens_per_row=12, prefix_sharing=True)
    assert b["input_ids"][0].tolist() == [5, 6, 7, 1, 2, 7, 3, 7, 4, 4, 9, 8]
    assert b["labels"][0].tolist() == [I, I, I, 1, 2, I, 3, I, 4, 4, I, 8]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 2, 3, 2, 3, 4, 0, 1]
    assert b["seq_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    m = b["attention_mask"][0, 0]
    assert m[6].tolist() == [True, True, False, False, False, True, True] + [False] * 5  # completion 2's token 3
    assert m[9].tolist() == [True, True] + [False] * 5 + [True, True, True] + [False] * 2  # completion 3's last token
    assert m[4, :5].tolist() == [True] * 5 and m[11].tolist() == [False] * 10 + [True, True]  # group 2: its own block
    plain = collate([{k: v for k, v in f.items() if k != "group"} for f in GROUP], mode="pack", pad_id=0, prefix_sharing=True)
    assert "attention_mask" not in plain  # SFT features without a group: no sharing


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_grpo_token_logps_equal_unshared(tiny, attn):
    """Per-token log-probs of a GRPO rollout's completions, through the update's own index, in both layouts."""
    from tandem.objectives.ppo.rollout import response_features, token_index, token_stats

    model_dir, tok, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn).eval()
    prompts = [tok(p).input_ids for p in ("Tell me about the sea and its", "Two words")]
    comps = [[11, 12, 13], [11, 14], [15, 16, 17, 18], [19], [20, 21], [22, 23, 24]]  # three completions per prompt
    feats = [{**f, "group": i // 3} for i, f in
             enumerate(response_features([prompts[i // 3] for i in range(6)], comps))]
    lens = torch.tensor([len(prompts[i // 3]) for i in range(6)])
    out = []
    for share in (False, True):
        b = collate(feats, mode="pack", pad_id=tok.pad_token_id, max_tokens_per_row=64, prefix_sharing=share)
        idx = token_index(b, lens, L=4)
        with torch.no_grad():
            out.append((idx.pad(token_stats(model, b, idx)[0]), int(b["input_ids"].numel()), idx))
    (a, n_plain, ia), (s, n_shared, _) = out
    torch.testing.assert_close(s, a, atol=1e-5, rtol=1e-5)
    assert n_shared < n_plain  # each prompt computed once per group
    assert ia.mask().sum() == sum(map(len, comps))


def test_grpo_run_with_prefix_sharing_gives_the_same_weights(tmp_path, tiny_model_dir, synthetic_files):
    from helpers_grpo import grpo_recipe

    from tandem.pipelines.train import train

    out, tokens = {}, {}
    for share in (False, True):
        r = grpo_recipe(tmp_path / str(share), tiny_model_dir, synthetic_files, grpo={"num_iterations": 2, "beta": 0.1},
                        **{"batching.prefix_sharing": share, "schedule.max_steps_per_stage": 2})
        train(r)
        out[share] = load_file(str(Path(r.output_dir) / "final" / "model.safetensors"))
        tokens[share] = [json.loads(x)["tokens"] for x in (Path(r.output_dir) / "metrics.jsonl").read_text().splitlines()
                         if json.loads(x)["split"] == "train"]
    assert all(a < b for a, b in zip(tokens[True], tokens[False]))  # the update computed each prompt once per group
    for k, v in out[False].items():
        torch.testing.assert_close(out[True][k], v, atol=1e-5, rtol=1e-4, msg=k)
