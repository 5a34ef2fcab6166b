"""PPO rollout pieces: per-token log-probs of packed responses, the LoRA reference, sampling, rewards, critics."""

from __future__ import annotations

import pytest
import torch
from helpers_objectives import IGNORE, make_batch, tiny_llama, tiny_reward_model

from tandem.objectives import build
from tandem.objectives.ppo.critic import RewardModelCritic, ValueHeadCritic, previous_critic
from tandem.objectives.ppo.rollout import (
    AdapterReference,
    FunctionReward,
    ModelReward,
    reference_token_logps,
    response_features,
    sample,
    token_index,
    token_stats,
)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add synchronisation
    yield
    torch.set_num_threads(n)


PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
RESPONSES = [[20, 21, 22], [23], [24, 25]]


def packed():
    feats = response_features(PROMPTS, RESPONSES)
    batch = make_batch([(f["input_ids"], f["labels"]) for f in feats])
    return batch, token_index(batch, torch.tensor([len(p) for p in PROMPTS]))


def full_logprobs(model, prompt, response, temperature=1.0):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].float() / temperature
    lp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    return lp[len(prompt) - 1:]


def test_response_features_label_only_the_response():
    (f,) = response_features([[1, 2]], [[3, 4]])
    assert f == {"input_ids": [1, 2, 3, 4], "labels": [IGNORE, IGNORE, 3, 4]}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_token_logps_match_full_logits_per_sequence(temperature):
    model = tiny_llama(0).eval()
    batch, idx = packed()
    with torch.no_grad():
        logp, ent, h = token_stats(model, batch, idx, temperature, entropy=True)
    padded = idx.pad(logp)
    mask = idx.mask()
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    for b, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        torch.testing.assert_close(padded[b, : len(r)], full_logprobs(model, p, r, temperature), atol=1e-5, rtol=1e-5)
    assert torch.all(padded[mask == 0] == 0)
    assert h.shape == (6, 32) and ent.shape == (6,) and bool((ent > 0).all())


def test_lora_reference_is_the_policy_with_the_stage_start_adapters():
    """Issue 16: the LoRA reference is the stage-start policy (its adapter tensors swapped in for the reference
    forward), not the base model with adapters disabled; the live adapters are back afterwards."""
    peft = pytest.importorskip("peft")
    policy = peft.get_peft_model(tiny_llama(0), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    policy.eval()
    batch, idx = packed()
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # the adapters after SFT: the stage starts here
        start = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
        expected = token_stats(policy, batch, idx)[0]
        with policy.disable_adapter():
            base = token_stats(policy, batch, idx)[0]
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.3)  # the policy moves during the stage
        adapted = token_stats(policy, batch, idx)[0]
    ref = reference_token_logps(policy, AdapterReference(start), batch, idx)
    torch.testing.assert_close(ref, expected)
    assert (ref - base).abs().max() > 1e-3  # not the base model
    assert (adapted - expected).abs().max() > 1e-3
    with torch.no_grad():  # the adapters are the live ones again after the reference pass
        torch.testing.assert_close(token_stats(policy, batch, idx)[0], adapted)


def test_reference_copy():
    policy, ref = tiny_llama(0).eval(), tiny_llama(1).eval()
    batch, idx = packed()
    with torch.no_grad():
        torch.testing.assert_close(reference_token_logps(policy, ref, batch, idx), token_stats(ref, batch, idx)[0])


def test_sample_stops_at_eos_and_respects_max_new_tokens():
    model = tiny_llama(0)
    eos = list(range(32, 64))  # half the vocabulary ends a response
    out = sample(model, PROMPTS * 4, pad_id=0, eos=eos, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=3)
    assert len(out) == 12 and any(len(r) < 6 for r in out)
    for r in out:
        assert 1 <= len(r) <= 6
        assert all(t not in eos for t in r[:-1])
        assert r[-1] in eos or len(r) == 6
    assert out == sample(model, PROMPTS * 4, 0, eos, 1.0, 1.0, 6, seed=3)  # seeded
    assert model.training  # mode restored


def test_function_reward_and_spec_errors():
    fr = FunctionReward("helpers_ppo:count_e")
    prompts = [{"prompt": [{"role": "user", "content": "x"}], "prompt_ids": [1]}] * 2
    assert fr(prompts, [[1], [2]], ["eee", "abc"], "cpu").tolist() == [3.0, 0.0]
    with pytest.raises(ValueError, match="module:function"):
        FunctionReward("no_colon")
    with pytest.raises(ValueError, match="reward_fn"):
        build("ppo", reward_fn="helpers_ppo:does_not_exist")


def test_registry_checks_ppo_arguments():
    with pytest.raises(TypeError, match="unknown argument"):
        build("ppo", reward_fn="helpers_ppo:count_e", cliprange=0.2)
    with pytest.raises(ValueError, match="exactly one"):
        build("ppo")
    with pytest.raises(ValueError, match="clip"):
        build("ppo", reward_fn="helpers_ppo:count_e", clip=0.0)
    with pytest.raises(ValueError, match="critic 'reward_model'"):
        build("ppo", reward_fn="helpers_ppo:count_e", critic="reward_model")


def test_model_reward_scores_last_token_of_prompt_plus_response():
    rm = tiny_reward_model(0).eval()

    def batch_fn(feats):
        return make_batch([(f["input_ids"], f["labels"]) for f in feats])

    scorer = ModelReward(rm, None, same_vocab=True, batch_fn=batch_fn, batch_size=2)
    prompts = [{"prompt_ids": p, "prompt": None} for p in PROMPTS]
    got = scorer(prompts, RESPONSES, ["", "", ""], "cpu")
    with torch.no_grad():
        want = [float(rm(input_ids=torch.tensor([p + r])).logits[0, 0]) for p, r in zip(PROMPTS, RESPONSES)]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_critics_give_per_token_values():
    batch, idx = packed()
    rm = tiny_reward_model(0).eval()
    critic = RewardModelCritic(rm)
    with torch.no_grad():
        v = idx.pad(critic.values(batch, idx))
        for b, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
            h = rm.model(input_ids=torch.tensor([p + r])).last_hidden_state[0]
            want = rm.score(h[len(p) - 1: len(p) + len(r) - 1]).squeeze(-1)  # state before each response token
            torch.testing.assert_close(v[b, : len(r)], want, atol=1e-5, rtol=1e-5)
    head = ValueHeadCritic(32)
    assert torch.all(head.values(batch, idx, torch.randn(6, 32)) == 0)  # zero-initialised


def test_previous_critic_picks_latest_earlier_stage(tmp_path):
    for name in ("02-pref-1", "04-pref-2", "06-pref-3"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "critic.safetensors").write_bytes(b"x")
    assert previous_critic(tmp_path, 5).parent.name == "04-pref-2"  # stage index 5 = "06-..."
    assert previous_critic(tmp_path, 1) is None


def test_encode_keeps_distinct_prompt_tails(tiny_model_dir):
    from transformers import AutoTokenizer

    from tandem.data.types import PreferenceExample, user

    from tandem.data.encode import prompt_ids

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ppo = build("ppo", reward_fn="helpers_ppo:count_e", max_new_tokens=8)
    long = "word " * 40
    exs = [PreferenceExample(user("hi"), "a", "b"), PreferenceExample(user("hi"), "c", "d"),
           PreferenceExample(user(long), "a", "b")]
    room = len(prompt_ids(tok, user("hi"))) + 2  # "hi" fits, the long prompt does not
    feats, stats = ppo.encode(tok, exs, max_length=room + 8, overlong="truncate")
    assert stats == {"total": 3, "kept": 2, "truncated": 1, "dropped": 0, "duplicates": 1}
    assert feats[0] == {"prompt_ids": prompt_ids(tok, user("hi")), "prompt": user("hi")}
    assert feats[1]["prompt_ids"] == prompt_ids(tok, user(long))[-room:]  # the tail, ending at the generation slot
    assert ppo.encode(tok, exs, max_length=room + 8, overlong="drop")[1]["dropped"] == 1
    assert ppo.tokenizer is tok
    with pytest.raises(ValueError, match="max_new_tokens"):
        ppo.encode(tok, exs, max_length=8)
