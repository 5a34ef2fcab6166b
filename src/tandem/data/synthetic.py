"""Small generated task sets whose answers can be checked by a program.

Used by the quickstart and by tests: no download, seeded, and every answer is known.

Instruction tasks (SFT): three families with one exact answer each,
  * ``add``:   "What is 23 + 45? Reply with the number only."          -> "68"
  * ``upper``: "Write the word 'river' in capital letters."             -> "RIVER"
  * ``next``:  "Which letter comes right after 'g' in the alphabet?"   -> "h"

Preference pairs, built by a stated rule: the chosen response states the correct answer in one short
sentence ("The answer is 68."); the rejected response states a wrong answer in the same sentence
("The answer is 67.") chosen among near misses. Chosen and rejected differ only in the answer tokens.
"""

from __future__ import annotations

import random
import string

from tandem.data.types import PreferenceExample, SFTExample, user

WORDS = (
    "river apple stone cloud bread candle garden silver window orange pencil rocket tiger violin winter "
    "yellow basket forest harbor island jacket ladder mirror needle pillow rabbit saddle thunder velvet wagon"
).split()


def _task(rng: random.Random) -> tuple[str, str, str, str]:
    """(family, prompt, answer, a wrong answer)."""
    family = rng.choice(["add", "upper", "next"])
    if family == "add":
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        wrong = a + b + rng.choice([-10, -2, -1, 1, 2, 10])
        return family, f"What is {a} + {b}? Reply with the number only.", str(a + b), str(wrong)
    if family == "upper":
        w = rng.choice(WORDS)
        i = rng.randrange(len(w))
        wrong = w.upper()[:i] + w[i] + w.upper()[i + 1 :]
        return family, f"Write the word '{w}' in capital letters.", w.upper(), wrong
    c = rng.choice(string.ascii_lowercase[:-1])
    nxt = chr(ord(c) + 1)
    wrong = chr(ord(c) - 1) if c != "a" else chr(ord(c) + 2)
    return family, f"Which letter comes right after '{c}' in the alphabet? Reply with the letter only.", nxt, wrong


def instruction_tasks(n: int, seed: int) -> list[SFTExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        family, prompt, answer, _wrong = _task(rng)
        out.append(SFTExample(prompt=user(prompt), response=answer, meta={"family": family, "answer": answer}))
    return out


def preference_pairs(n: int, seed: int) -> list[PreferenceExample]:
    return _pairs(n, seed, chosen=lambda answer, wrong: f"The answer is {answer}.",
                  rejected=lambda answer, wrong: f"The answer is {wrong}.")


def _pairs(n: int, seed: int, chosen, rejected) -> list[PreferenceExample]:
    """``n`` seeded tasks as pairs with ``chosen(answer, wrong)`` / ``rejected(answer, wrong)`` replies."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        family, prompt, answer, wrong = _task(rng)
        out.append(PreferenceExample(prompt=user(prompt), chosen=chosen(answer, wrong), rejected=rejected(answer, wrong),
                                     meta={"family": family, "answer": answer}))
    return out


def normalise_answer(text: str) -> str:
    """The answer a response commits to: the last word of its first line, without quotes or punctuation.

    "68" -> "68"; "The answer is 68." -> "68"; "Sure! I think it is 67." -> "67".
    """
    lines = [ln for ln in text.strip().split("\n") if ln.strip()]
    words = lines[0].split() if lines else []
    return words[-1].strip(".,!?;:\"'`()") if words else ""


def is_correct(output: str, answer: str) -> bool:
    return normalise_answer(output) == answer


def to_records(examples) -> list[dict]:
    """JSONL records in tandem's plain formats (prompt/response, prompt/chosen/rejected)."""
    recs = []
    for e in examples:
        prompt = e.prompt[-1]["content"]
        if isinstance(e, SFTExample):
            recs.append({"prompt": prompt, "response": e.response, **e.meta})
        else:
            recs.append({"prompt": prompt, "chosen": e.chosen, "rejected": e.rejected, **e.meta})
    return recs


def conflict_pairs(n: int, seed: int) -> list[PreferenceExample]:
    """Preference pairs in conflict with the instruction tasks, by construction (the CPU testbed).

    The labeller prefers a friendly, confident reply that guesses ("Sure! I think it is 67.") over the
    plain correct answer ("68"). Training towards the chosen style therefore costs exact-match accuracy,
    which is what hybrid training is meant to limit.
    """
    return _pairs(n, seed, chosen=lambda answer, wrong: f"Sure! I think it is {wrong}.",
                  rejected=lambda answer, wrong: answer)
