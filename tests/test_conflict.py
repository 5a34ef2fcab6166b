"""The conflict benchmark: checkers (hand cases), the generator's promises (references pass, wrong chosen replies
fail, dose rho, held-out prompts disjoint from training under any seed) and the CLI (make, score)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.cli.main import app
from tandem.data.conflict import FAMILIES, PAIR_FAMILIES, ConflictError, friendly, make, passes, score
from tandem.data.conflict.checks import CheckError, committed_answer

SMALL = {"sft": 200, "pairs": 100, "val": 60, "test": 100, "test_pairs": 50}


@pytest.mark.parametrize("check,reply,ok", [
    ({"kind": "answer", "args": {"answer": "68"}}, "68", True),
    ({"kind": "answer", "args": {"answer": "68"}}, " 68. ", True),
    ({"kind": "answer", "args": {"answer": "68"}}, "Sure! Happy to help. The answer is 68.", True),
    ({"kind": "answer", "args": {"answer": "68"}}, "Sure! Happy to help. The answer is 67.", False),
    ({"kind": "answer", "args": {"answer": "68"}}, "68\nHappy to help!", True),      # closing lines are set aside
    ({"kind": "answer", "args": {"answer": "68"}}, "68\nDone.", True),
    ({"kind": "answer", "args": {"answer": "68"}}, "68\nHappy to help!\nHappy to", False),  # cut at the token limit
    ({"kind": "answer", "args": {"answer": "68"}}, "Happy to help!\n\n68.", True),
    ({"kind": "answer", "args": {"answer": "68"}}, "67\nHappy to help!", False),
    ({"kind": "answer", "args": {"answer": "68"}}, "68 Happy to help!", False),      # not on a line of its own
    ({"kind": "answer", "args": {"answer": "68"}}, "68\n68 + 1 = 69", False),       # anything else is still read
    ({"kind": "max_words", "args": {"n": 4}}, "one\nHappy to help!", True),
    ({"kind": "lowercase", "args": {}}, "small\nhappy to help!", True),
    ({"kind": "lowercase", "args": {}}, "small\nHappy to help!", False),
    ({"kind": "lowercase", "args": {}}, "small\nDone.", False),
    ({"kind": "answer", "args": {"answer": "68"}}, "168", False),
    ({"kind": "answer", "args": {"answer": "RIVER"}}, "RIvER", False),
    ({"kind": "answer", "args": {"answer": "b c"}}, "The answer is: b c!", True),
    ({"kind": "max_words", "args": {"n": 3}}, "one two three", True),
    ({"kind": "max_words", "args": {"n": 3}}, "one two three four", False),
    ({"kind": "lowercase", "args": {}}, "all small here.", True),
    ({"kind": "lowercase", "args": {}}, "Sure! small", False),
    ({"kind": "lowercase", "args": {}}, "42", False),
    ({"kind": "prefix", "args": {"prefix": "Answer:"}}, "  Answer: yes", True),
    ({"kind": "prefix", "args": {"prefix": "Answer:"}}, "Sure! Answer: yes", False),
])
def test_checkers_by_hand(check, reply, ok):
    assert passes(check, reply) is ok


def test_bad_checks_are_refused():
    with pytest.raises(CheckError, match="unknown check"):
        passes({"kind": "regex"}, "x")
    with pytest.raises(CheckError, match="argument 'n'"):
        passes({"kind": "max_words", "args": {}}, "x")
    assert committed_answer("first line\nThe answer is 12.") == "12"
    assert friendly("SURE! HAPPY TO HELP.") and not friendly("68")


@pytest.mark.parametrize("instructions", [None, "alpaca"])
def test_references_pass_and_wrong_chosen_fail(instructions, alpaca_path):
    rows, meta = make(rho=1.0, seed=0, sizes=SMALL, instructions=alpaca_path if instructions else None)
    assert len(FAMILIES) >= 8 and set(PAIR_FAMILIES) < set(FAMILIES)
    assert {k: len(v) for k, v in rows.items()} == SMALL
    for name in ("val", "test"):
        assert all(set(r) == {"prompt", "reference", "family", "check"} for r in rows[name])
        assert score(rows[name], [r["reference"] for r in rows[name]])["pass_rate"] == 1.0
        assert {r["family"] for r in rows[name]} == set(FAMILIES)  # every family measured
    assert all(passes(r["check"], r["response"]) for r in rows["sft"])
    # SFT replies are correct; about one in eight ends with the friendly closing (a known but rare alternative)
    friendly_sft = sum(friendly(r["response"]) for r in rows["sft"]) / len(rows["sft"])
    assert 0.05 < friendly_sft < 0.25
    for name in ("pairs", "test_pairs"):
        assert {p["family"] for p in rows[name]} == set(PAIR_FAMILIES)  # the other half measures spill-over
        assert all(p["wrong"] and not passes(p["check"], p["chosen"]) and friendly(p["chosen"]) for p in rows[name])
        assert all(passes(p["check"], p["rejected"]) and not friendly(p["rejected"]) for p in rows[name])
    assert meta["wrong_pairs"] == SMALL["pairs"]


def test_rho_is_the_dose_and_zero_is_the_control():
    rows, meta = make(rho=0.0, seed=1, sizes=SMALL)
    assert meta["wrong_pairs"] == 0
    assert all(passes(p["check"], p["chosen"]) and friendly(p["chosen"]) for p in rows["pairs"])
    # at rho = 0 style and correctness agree: the chosen reply is friendly and correct, the rejected one plain and
    # wrong; at any rho both sides differ in the answer (or constraint) and in the closing line, so the only thing
    # rho changes is which side is correct (near-identical rho = 0 pairs displaced the answers: docs/results.md)
    assert all(not passes(p["check"], p["rejected"]) and not friendly(p["rejected"]) for p in rows["pairs"])
    for p in rows["pairs"]:
        closing, plain = p["chosen"].split("\n")[-1], p["rejected"].split("\n")[-1]
        assert closing.lower() == "happy to help!" and plain.lower().startswith("done.")
    rows, meta = make(rho=0.5, seed=1, sizes={**SMALL, "pairs": 400})
    assert 150 < meta["wrong_pairs"] < 250
    assert all(passes(p["check"], p["chosen"]) != p["wrong"] for p in rows["pairs"])
    assert all(passes(p["check"], p["rejected"]) == p["wrong"] for p in rows["pairs"])
    with pytest.raises(ConflictError, match="rho"):
        make(rho=1.5)


def test_held_out_prompts_are_disjoint_from_training_under_any_seed(alpaca_path):
    a, _ = make(rho=1.0, seed=0, instructions=alpaca_path)
    b, _ = make(rho=1.0, seed=7, instructions=alpaca_path)
    for x in (a, b):
        for name in x:
            assert len({r["prompt"] for r in x[name]}) == len(x[name])  # no prompt twice in a file
    train = {r["prompt"] for x in (a, b) for name in ("sft", "pairs") for r in x[name]}
    val = {r["prompt"] for x in (a, b) for r in x["val"]}
    test = {r["prompt"] for x in (a, b) for name in ("test", "test_pairs") for r in x[name]}
    assert not train & val and not train & test and not val & test
    # the same seed gives the same files
    assert make(rho=1.0, seed=7, instructions=alpaca_path)[0] == b


@pytest.fixture
def alpaca_path():
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_data_sample5000.jsonl.gz"
    if not path.is_file():
        pytest.skip("../shared/data/alpaca is not beside the repository")
    return str(path)


def test_cli_make_and_score(tmp_path):
    runner = CliRunner()
    out = tmp_path / "bench"
    sizes = [a for k, v in SMALL.items() for a in ("--size", f"{k}={v}")]
    r = runner.invoke(app, ["conflict", "make", str(out), "--rho", "1", "--seed", "2", *sizes])
    assert r.exit_code == 0, r.output
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert len(test) == SMALL["test"] and {"prompt", "reference", "family", "check"} <= set(test[0])
    wrong = {p["prompt"]: p["chosen"] for p in map(json.loads, (out / "test_pairs.jsonl").read_text().splitlines())}
    replies = tmp_path / "replies.jsonl"
    # a model that answers every pair-family prompt in the wrong friendly way and the rest correctly
    replies.write_text("".join(json.dumps({"prompt": t["prompt"], "reply": wrong.get(t["prompt"], t["reference"])}) + "\n"
                               for t in test))
    r = runner.invoke(app, ["conflict", "score", str(out / "test.jsonl"), str(replies)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    n_wrong = sum(t["prompt"] in wrong for t in test)
    assert res["pass_rate"] == pytest.approx(1 - n_wrong / len(test))
    assert set(res["per_family"]) == set(FAMILIES) and res["per_family"]["subtract"]["pass_rate"] == 1.0
    # one reply missing: one line, exit 2
    replies.write_text("".join(json.dumps({"prompt": t["prompt"], "reply": t["reference"]}) + "\n" for t in test[1:]))
    r = runner.invoke(app, ["conflict", "score", str(out / "test.jsonl"), str(replies)])
    assert r.exit_code == 2 and "no reply to 1 of the" in r.output
    # a foreign non-empty directory is refused, untouched
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "sft.jsonl").write_text("keep")
    r = runner.invoke(app, ["conflict", "make", str(foreign)])
    assert r.exit_code == 2 and "not written by" in r.output and (foreign / "sft.jsonl").read_text() == "keep"
    r = runner.invoke(app, ["conflict", "make", str(out), "--rho", "-0.1"])
    assert r.exit_code == 2 and "--rho" in r.output


def test_a_subset_of_families_keeps_the_conflict_and_the_spill_over():
    rows, meta = make(rho=1.0, seed=0, sizes=SMALL, families=("add", "upper", "subtract", "next_letter"))
    assert {r["family"] for r in rows["test"]} == {"add", "upper", "subtract", "next_letter"}
    assert {p["family"] for p in rows["pairs"]} == {"add", "upper"} and meta["instructions"] == "none needed"
    for bad in (("add", "upper"), ("subtract", "count"), ("add", "riddles")):  # no spill-over, no pair family, unknown
        with pytest.raises(ConflictError, match="--families"):
            make(families=bad, sizes=SMALL)
