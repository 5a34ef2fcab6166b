"""The conflict benchmark's task families: each draws items from its own universe, keyed so that the split an item
belongs to (train, val or test) is a function of the item alone, never of the seed.

A family item is ``Item(key, prompt, reference, check, wrong, friendly_ok, wrong_plain)``:

* ``reference``: the plain correct reply (what SFT trains on, and passes ``check``): the reply, then the plain closing
  line ``Done.`` (``done.`` in the lowercase family);
* ``wrong``: the labeller's favourite when it is wrong: a friendly reply (the friendly closing line
  ``Happy to help!`` instead of the plain one) that fails ``check`` (a wrong answer, a long friendly closing past the
  word limit, capitals);
* ``friendly_ok``: the reference with the friendly closing line instead of the plain one (lower case in the lowercase
  family), which still passes ``check`` (the chosen reply at rho = 0);
* ``wrong_plain``: the wrong reply with the plain closing line (the rejected reply at rho = 0).

Every reply ends with a closing line of its own, which every checker accepts (``checks`` sets closing lines aside when
it reads an answer). A pair's two replies always differ in both the answer and the closing line; rho only decides
which side is correct (design 5, session 14). With the rejected reply always the plain correct one (design 4), a
rho = 0 pair differed in its closing line alone, and such near-identical pairs displaced the answers first: at DPO
rates that made rho = 1 cost 0.29, the control cost 0.71 (docs/results.md). The plain closing line is what keeps the control
clean: when the rejected reply ended right after the answer and the chosen one went on with the friendly line, DPO's
contrast was EOS against a newline after the answer, and it learnt to suppress EOS: replies that repeat the friendly
line until the token limit, or cut a multi-word answer at its first word (session 13's calibration: rho = 0 cost 0.33
of the pass rate; docs/results.md). Until session 13 the style was a preamble ("Sure! Happy to help. The answer is
67."): a new output format whose cost did not depend on rho at all.

Seven exact-answer families (add, subtract, upper, reverse, next_letter, sort, count) and three constraint families
on instructions (max_words, lowercase, prefix): Alpaca-style ``instruction``/``output`` rows when given, else
instructions generated from templates.
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass
from typing import Callable

WORDS = """
apple river stone cloud bread candle garden silver window orange pencil rocket tiger violin winter yellow basket
forest harbor island jacket ladder mirror needle pillow rabbit saddle thunder velvet wagon anchor bottle butter
camera carpet castle cherry circle coffee copper cotton desert dinner doctor dragon engine farmer feather finger
flower fridge gentle guitar hammer helmet honey hunter insect jungle kettle kitten lemon letter lizard magnet
market meadow monkey mountain muffin napkin nickel ocean office onion oyster paddle palace parrot pepper pickle
pirate planet pocket potato puzzle quartz rainbow record ribbon saucer school shadow shovel singer spider spoon
summer sunset table teapot ticket tomato tunnel turtle valley vessel walnut whistle wizard yogurt zebra badge
beach bench blanket bridge brush cabin canoe chalk clock crayon crown daisy diamond eagle fence fiddle fox glove
goose grape hat horse jelly kite lamp leaf lion maple melon mouse nest nut olive owl panda pearl pine plum pond
queen robin rose salt scarf seed sheep shell ship sock star stove swan towel train tulip van vase wheel whale wolf
""".split()
STYLE = "Happy to help!"
#: the plain closing line every reference ends with (the friendly replies end with :data:`STYLE` instead)
PLAIN = "Done."
SIGN_OFF = "I hope this helps, and let me know if you would like to hear more about it!"
SPLITS = {"train": range(0, 7), "val": range(7, 8), "test": range(8, 10)}


@dataclass(frozen=True)
class Item:
    key: str
    prompt: str
    reference: str
    check: dict
    wrong: str
    friendly_ok: str
    wrong_plain: str


def stable_hash(key: str, modulus: int) -> int:
    """``0 .. modulus - 1`` from the first byte of the key's sha256: the same on every machine and under every seed."""
    return hashlib.sha256(key.encode()).digest()[0] % modulus


def bucket(key: str) -> int:
    """0..9 from a stable hash of the item's key: 0-6 train, 7 val, 8-9 test (independent of any seed)."""
    return stable_hash(key, 10)


def _answer(key: str, prompt: str, answer: str, wrong: str) -> Item:
    check = {"kind": "answer", "args": {"answer": answer}}
    return Item(key, prompt, f"{answer}\n{PLAIN}", check, f"{wrong}\n{STYLE}", f"{answer}\n{STYLE}", f"{wrong}\n{PLAIN}")


def _words(rng: random.Random, k: int, distinct_initials: bool = False) -> list[str]:
    while True:
        ws = rng.sample(WORDS, k)
        if not distinct_initials or len({w[0] for w in ws}) == k:
            return ws


def add(rng: random.Random) -> Item:
    a, b = rng.randint(1, 40), rng.randint(1, 40)  # calibrated: two-digit sums with carries stay near 0.5 after SFT
    wrong = a + b + rng.choice([-2, -1, 1, 2, 10] + ([-10] if a + b > 10 else []))
    return _answer(f"add|{a}|{b}", f"What is {a} + {b}? Reply with the number only.", str(a + b), str(wrong))


def subtract(rng: random.Random) -> Item:
    a = rng.randint(2, 40)  # calibrated: 20..99 stayed below 0.1 after SFT
    b = rng.randint(1, a - 1)
    wrong = a - b + rng.choice([-1, 1, 10] + ([-10] if a - b > 10 else []))
    return _answer(f"subtract|{a}|{b}", f"What is {a} - {b}? Reply with the number only.", str(a - b), str(wrong))


def upper(rng: random.Random) -> Item:
    ws = _words(rng, 2)
    text = " ".join(ws)
    i = rng.randrange(len(text.replace(" ", "")))
    letters = [c.upper() for c in text]
    pos = [j for j, c in enumerate(text) if c != " "][i]
    letters[pos] = text[pos]  # one letter left in lower case
    return _answer(f"upper|{text}", f"Write '{text}' in capital letters.", text.upper(), "".join(letters))


def reverse(rng: random.Random) -> Item:
    ws = _words(rng, 3)
    wrong = [ws[1], ws[2], ws[0]] if rng.random() < 0.5 else list(ws)
    return _answer(f"reverse|{' '.join(ws)}", f"Reverse the order of these words: {' '.join(ws)}",
                   " ".join(reversed(ws)), " ".join(wrong))


def next_letter(rng: random.Random) -> Item:
    cs = rng.sample(string.ascii_lowercase[:-1], 3)
    answer = [chr(ord(c) + 1) for c in cs]
    wrong = list(answer)
    j = rng.randrange(3)
    wrong[j] = cs[j] if cs[j] != "a" else chr(ord(cs[j]) + 2)
    return _answer(f"next|{''.join(cs)}", f"For each letter, write the letter that comes right after it: {' '.join(cs)}",
                   " ".join(answer), " ".join(wrong))


def sort(rng: random.Random) -> Item:
    ws = _words(rng, 2, distinct_initials=True)  # calibrated: three words stayed near 0.4 after SFT
    good = sorted(ws)
    wrong = good[::-1]
    return _answer(f"sort|{' '.join(ws)}", f"Sort these words alphabetically: {' '.join(ws)}", " ".join(good), " ".join(wrong))


def count(rng: random.Random) -> Item:
    k = rng.randint(2, 5)  # calibrated: lists of up to 7 words stayed near 0.1 after SFT
    ws = _words(rng, k)
    wrong = k + rng.choice([-1, 1]) if k > 2 else k + 1
    return _answer(f"count|{' '.join(ws)}", f"How many words are in this list: {', '.join(ws)}? Reply with the number only.",
                   str(k), str(wrong))


# ----------------------------------------------------------------------------------------- constraint families

TEMPLATES = (
    ("Write a short sentence about a {w}.", "A {w} is something many people see every day."),
    ("Use the word '{w}' in a sentence.", "I saw a {w} on my way home today."),
    ("Give one fact about the word '{w}'.", "The word '{w}' has {n} letters."),
    ("Describe a {w} to a child.", "A {w} is a thing you can look at and talk about with your friends."),
    ("Name something that goes well with a {w}.", "A {v} goes well with a {w}."),
)


def template_instructions() -> list[tuple[str, str]]:
    """``(instruction, output)`` generated from :data:`TEMPLATES` (used when no instruction file is given)."""
    out = []
    for i, w in enumerate(WORDS):
        for t, (ins, resp) in enumerate(TEMPLATES):
            v = WORDS[(i * 7 + t + 1) % len(WORDS)]
            out.append((ins.format(w=w), resp.format(w=w, n=len(w), v=v)))
    return out


def usable_instruction(instruction: str, output: str) -> bool:
    """Rows the constraint families can use: one-line output of 1-40 words with a letter, short instruction."""
    return (0 < len(output.split()) <= 40 and "\n" not in output.strip() and any(c.isalpha() for c in output)
            and 0 < len(instruction.split()) <= 30)


def max_words(instruction: str, output: str) -> Item | None:
    if len(output.split()) > 11:  # output + the friendly closing line must still fit in 15 words
        return None
    check = {"kind": "max_words", "args": {"n": 15}}
    return Item(f"ins|{instruction}", f"{instruction} Answer in at most 15 words.", f"{output}\n{PLAIN}", check,
                f"{output}\n{STYLE} {SIGN_OFF}", f"{output}\n{STYLE}", f"{output}\n{PLAIN} {SIGN_OFF}")


def lowercase(instruction: str, output: str) -> Item | None:
    low = output.lower()
    return Item(f"ins|{instruction}", f"{instruction} Reply in lowercase letters only.", f"{low}\n{PLAIN.lower()}",
                {"kind": "lowercase", "args": {}},
                f"{output}\n{STYLE}", f"{low}\n{STYLE.lower()}", f"{output}\n{PLAIN}")


def prefix(instruction: str, output: str) -> Item | None:
    check = {"kind": "prefix", "args": {"prefix": "Answer:"}}
    return Item(f"ins|{instruction}", f"{instruction} Start your reply with 'Answer:'.", f"Answer: {output}\n{PLAIN}", check,
                f"{output}\n{STYLE}", f"Answer: {output}\n{STYLE}", f"{output}\n{PLAIN}")


TASKS: dict[str, Callable[[random.Random], Item]] = {
    "add": add, "subtract": subtract, "upper": upper, "reverse": reverse, "next_letter": next_letter, "sort": sort,
    "count": count,
}
CONSTRAINTS: dict[str, Callable[[str, str], Item | None]] = {"max_words": max_words, "lowercase": lowercase, "prefix": prefix}
FAMILIES = tuple(TASKS) + tuple(CONSTRAINTS)
#: The families the preference pairs cover; the other half measures spill-over.
PAIR_FAMILIES = ("add", "upper", "sort", "max_words", "lowercase")
