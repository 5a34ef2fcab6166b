"""tandem.rewards: reward functions called as TRL calls them (batched, the dataset's other columns as keyword lists),
None for unscored rows, weights, per-function statistics, one-line errors naming the function, file.py:function,
a reward model in the list, and the conflict benchmark's checkers."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.rewards import RewardFunctionError, RewardFunctions
from tandem.rewards.conflict import conflict_labeller, conflict_pass, conflict_style


def feats(prompts, conversational=False, **columns):
    out = []
    for i, p in enumerate(prompts):
        out.append({"prompt": [{"role": "user", "content": p}], "conversational": conversational,
                    "columns": {k: v[i] for k, v in columns.items() if v[i] is not None}})
    return out


def test_a_reward_function_from_trls_docs_runs_unchanged():
    # helpers_grpo.reward_len is TRL's documented example: -abs(20 - len(completion)) for standard rows
    rf = RewardFunctions(["helpers_grpo:reward_len"])
    got = rf(feats(["a", "b"]), [[5, 2], [6]], ["x" * 20, "y" * 5], "cpu")
    assert got.tolist() == [[0.0], [-15.0]] and rf.names == ["reward_len"]


def test_columns_arrive_as_keyword_lists_and_none_is_unscored():
    seen = {}

    def spy(prompts, completions, completion_ids, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        return [1.0] * len(completions)

    rf = RewardFunctions([spy, "helpers_grpo:answer_in_completion"])
    f = feats(["What is 2+2?", "Say hi."], answer=["4", None], family=["add", "greet"])
    got = rf(f, [[7, 2], [8]], ["It is 4", "hi"], "cpu")
    assert seen["prompts"] == ["What is 2+2?", "Say hi."] and seen["completions"] == ["It is 4", "hi"]
    assert seen["completion_ids"] == [[7, 2], [8]]
    assert seen["answer"] == ["4", None] and seen["family"] == ["add", "greet"]  # a missing column is None
    assert got[:, 1].tolist()[0] == 1.0 and math.isnan(got[1, 1])  # None -> not scored


def test_conversational_rows_get_message_lists():
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions)
        return [len(c[0]["content"]) for c in completions]

    rf = RewardFunctions([spy])
    got = rf(feats(["Hi"], conversational=True), [[3]], ["hello"], "cpu")
    assert seen["prompts"] == [[{"role": "user", "content": "Hi"}]]
    assert seen["completions"] == [[{"role": "assistant", "content": "hello"}]] and got.tolist() == [[5.0]]


def test_weights_combine_over_the_functions_that_scored_and_stats():
    rf = RewardFunctions(["helpers_grpo:count_e", "helpers_grpo:count_e"], weights=[1.0, 0.5])
    per = torch.tensor([[1.0, math.nan], [math.nan, math.nan], [2.0, 3.0]])
    out = rf.combine(per)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 2.0 + 0.5 * 3.0
    assert rf.names == ["count_e_0", "count_e_1"]
    st = rf.stats(rf.sums(per))
    assert st["rewards/count_e_0/mean"] == 1.5 and st["rewards/count_e_0/std"] == 0.5  # over [1, 2]
    assert st["rewards/count_e_1/mean"] == 3.0 and st["rewards/count_e_1/std"] == 0.0
    assert rf.scores(feats(["a", "b"]), [[1], [1]], ["eee", "x"], "cpu").tolist() == [4.5, 0.0]


@pytest.mark.parametrize("spec, match", [
    ("helpers_grpo:raises", r"^reward function raises raised KeyError: 'no such column'$"),
    ("helpers_grpo:wrong_length", r"^reward function wrong_length returned 1 rewards for 2 completions"),
])
def test_a_failing_function_is_one_line_naming_it(spec, match):
    rf = RewardFunctions([spec])
    with pytest.raises(RewardFunctionError, match=match):
        rf(feats(["a", "b"]), [[1], [1]], ["x", "y"], "cpu")


def test_a_non_number_is_refused():
    rf = RewardFunctions([lambda completions, **kw: ["good"] * len(completions)])
    with pytest.raises(RewardFunctionError, match="returned 'good' for completion 0; a reward is a number or None"):
        rf(feats(["a"]), [[1]], ["x"], "cpu")


def test_file_py_function_and_bad_specs(tmp_path):
    f = tmp_path / "my_rewards.py"
    f.write_text("def shout(completions, **kwargs):\n    return [float(c.isupper()) for c in completions]\n")
    rf = RewardFunctions([f"{f}:shout"])
    assert rf(feats(["a", "b"]), [[1], [1]], ["HEY", "hey"], "cpu").tolist() == [[1.0], [0.0]]
    with pytest.raises(ValueError, match="no function 'nope'"):
        RewardFunctions([f"{f}:nope"])
    with pytest.raises(ValueError, match="missing.py not found"):
        RewardFunctions([str(tmp_path / "missing.py") + ":f"])
    with pytest.raises(ValueError, match="helpers_grpo:no_such"):
        RewardFunctions(["helpers_grpo:no_such"])
    with pytest.raises(FileNotFoundError, match="not found: ./no/such/reward-model"):
        RewardFunctions(["./no/such/reward-model"])


def test_a_reward_model_stands_in_the_list(tmp_path):
    from helpers_evaluation import tiny_reward_model

    from tandem.objectives.reward import sequence_rewards

    model, tok = tiny_reward_model(seed=3)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rf = RewardFunctions(["helpers_grpo:count_e", str(tmp_path / "rm")])
    got = rf(feats(["Hi", "Yo"]), [[1], [1]], ["hello", "bye"], "cpu")
    assert rf.names == ["count_e", "rm"] and got[:, 0].tolist() == [1.0, 1.0]
    from tandem.data import collate
    from tandem.data.encode import prompt_ids, response_ids

    seq = prompt_ids(tok, [{"role": "user", "content": "Hi"}]) + response_ids(tok, "hello")
    want = sequence_rewards(model.eval(), collate([{"input_ids": seq, "labels": [-100] * len(seq)}], mode="pad",
                                                  pad_id=tok.pad_token_id), 1)
    assert got[0, 1] == pytest.approx(float(want[0].detach()), abs=1e-5)


def test_conflict_checkers_as_reward_functions():
    check = [{"kind": "answer", "args": {"answer": "68"}}, {"kind": "lowercase", "args": {}}, None]
    completions = ["68\nHappy to help!", "Hello there", "anything"]
    assert conflict_pass(completions, check=check) == [1.0, 0.0, None]
    assert conflict_style(completions) == [1.0, 0.0, 0.0]
    chat = [[{"role": "assistant", "content": "67"}]]
    assert conflict_pass(chat, check=[check[0]]) == [0.0]
    rf = RewardFunctions(["tandem.rewards.conflict:conflict_pass"])
    f = feats(["What is 60+8?"], check=[check[0]])
    assert rf(f, [[1]], ["68"], "cpu").tolist() == [[1.0]]


def test_conflict_labeller_scores_the_pairs_as_the_labeller_ranked_them():
    """By hand: friendly + the preferred answer = 2, one of the two = 1, neither = 0; at rho = 1 (wrong) the wrong
    answer is the preferred one. On the benchmark's own pairs every chosen reply gets 2 and every rejected one 0."""
    from tandem.data.conflict.make import make

    add = {"kind": "answer", "args": {"answer": "68"}}
    ys = ["67\nHappy to help!", "68\nHappy to help!", "68\nDone.", "67\nDone."]
    assert conflict_labeller(ys, check=[add] * 4, wrong=[True] * 4) == [2.0, 1.0, 0.0, 1.0]
    assert conflict_labeller(ys, check=[add] * 4, wrong=[False] * 4) == [1.0, 2.0, 1.0, 0.0]
    assert conflict_labeller(ys[:2], check=[add, None], wrong=[None, True]) == [None, None]
    for rho in (0.0, 0.5, 1.0):
        pairs = make(rho=rho, seed=0, sizes={"sft": 8, "pairs": 64, "val": 4, "test": 4, "test_pairs": 4})[0]["pairs"]
        kw = {"check": [p["check"] for p in pairs], "wrong": [p["wrong"] for p in pairs]}
        assert conflict_labeller([p["chosen"] for p in pairs], **kw) == [2.0] * len(pairs)
        assert conflict_labeller([p["rejected"] for p in pairs], **kw) == [0.0] * len(pairs)
