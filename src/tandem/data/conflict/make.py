"""``tandem conflict make``: the conflict benchmark's files, generated and seeded.

* ``sft.jsonl`` (``prompt, response, family, check``): every family, balanced, from the train split; the correct
  reply with the plain closing line, or for one item in eight the friendly one (:data:`FRIENDLY_SFT`).
* ``pairs.jsonl`` (``prompt, chosen, rejected, family, check, wrong``): the pair families only (half of them; the
  others measure spill-over), from the train split. With probability ``rho`` the chosen reply is friendly but fails
  the check (``wrong: true``) and the rejected one is the plain correct reply; else the chosen reply is friendly and
  correct and the rejected one plain and wrong. Both sides always differ in the answer and the closing line; ``rho``
  decides which side is correct. ``rho = 1`` is the conflict (style against correctness); ``rho = 0`` the negative
  control, where style and correctness agree.
* ``val.jsonl`` / ``test.jsonl`` (``prompt, reference, family, check``): every family, from the val / test split.
* ``test_pairs.jsonl``: held-out pairs of the pair families (same rule and rho), from the test split.
* ``meta.json``: the settings, counts and the instruction source.

An item's split is a hash of its key (the numbers, words or instruction it is about), not of the seed, so no
held-out prompt is a training prompt under any seed, and val and test never share an item.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tandem.data.conflict import families as F

FILES = ("sft", "pairs", "val", "test", "test_pairs")
# sft 3072: the calibration (docs/results.md) for SmolLM2-135M + LoRA at lr 1e-3, one epoch: pass rate >= 0.8 alone
SIZES = {"sft": 3072, "pairs": 1024, "val": 256, "test": 512, "test_pairs": 256}


class ConflictError(ValueError):
    """A setting the generator cannot honour (rho outside [0, 1], a universe too small for the sizes asked)."""


def load_instructions(path: str | None) -> tuple[list[tuple[str, str]], str]:
    """``(instruction, output)`` rows usable by the constraint families, and a line naming where they came from:
    an Alpaca-style file (``instruction``, ``input``, ``output``; rows with an input are left out) or, with no
    path, instructions generated from templates."""
    if path is None:
        return F.template_instructions(), "generated templates (tandem.data.conflict.families.TEMPLATES)"
    from tandem.data.readers import read_records

    rows = []
    for r in read_records(path):
        ins, out = str(r.get("instruction") or "").strip(), str(r.get("output") or "").strip()
        if not str(r.get("input") or "").strip() and F.usable_instruction(ins, out):
            rows.append((ins, out))
    if len(rows) < 100:
        raise ConflictError(f"{path}: only {len(rows)} usable instruction/output rows (one line, 1-40 words, no input); "
                            "need at least 100")
    return rows, path


class _Pools:
    """Draws distinct items of one split, family by family (rejection sampling on the split's buckets)."""

    def __init__(self, split: str, instructions: list[tuple[str, str]], rng: random.Random):
        self.buckets, self.rng, self.seen = F.SPLITS[split], rng, set()
        self.ins = {name: [it for it in (fn(i, o) for i, o in instructions)
                           if it is not None and F.bucket(it.key) in self.buckets] for name, fn in F.CONSTRAINTS.items()}
        for items in self.ins.values():
            rng.shuffle(items)

    def draw(self, family: str) -> F.Item:
        if family in F.CONSTRAINTS:
            items = self.ins[family]
            while items:
                it = items.pop()
                if it.prompt not in self.seen:
                    self.seen.add(it.prompt)
                    return it
            raise ConflictError(f"family {family!r}: not enough instructions for the sizes asked; give more rows or "
                                "smaller sizes")
        for _ in range(100_000):
            it = F.TASKS[family](self.rng)
            if F.bucket(it.key) in self.buckets and it.prompt not in self.seen:
                self.seen.add(it.prompt)
                return it
        raise ConflictError(f"family {family!r}: its universe is exhausted for the sizes asked")


def _balanced(families: tuple[str, ...], n: int, rng: random.Random) -> list[str]:
    """``n`` family names, as even as possible, in a seeded order."""
    names = [families[i % len(families)] for i in range(n)]
    rng.shuffle(names)
    return names


#: one SFT reply in FRIENDLY_SFT ends with the friendly closing line instead of the plain one (chosen by the item's
#: hash, not the seed): the SFT model then knows the friendly closing as a rare alternative, and the preference stage
#: shifts its share. With every SFT reply plain, the friendly closing had to climb about 25 nats, and a DPO gentle
#: enough to leave the answers alone moved the freed probability to other continuations (docs/results.md)
FRIENDLY_SFT = 8


def sft_response(it: F.Item) -> str:
    """The SFT reply of an item: its reference, or (one item in :data:`FRIENDLY_SFT`) the same correct reply with the
    friendly closing line."""
    return it.friendly_ok if F.stable_hash(f"sft|{it.key}", FRIENDLY_SFT) == 0 else it.reference


def _pair(it: F.Item, family: str, wrong: bool) -> dict:
    return {"prompt": it.prompt, "chosen": it.wrong if wrong else it.friendly_ok,
            "rejected": it.reference if wrong else it.wrong_plain,
            "family": family, "check": it.check, "wrong": wrong}


def make(rho: float = 1.0, seed: int = 0, sizes: dict[str, int] | None = None, instructions: str | None = None,
         families: tuple[str, ...] | None = None) -> tuple[dict[str, list[dict]], dict]:
    """The benchmark's rows per file and its ``meta``. ``families``: a subset of :data:`FAMILIES` (the quickstart uses
    four short-answer ones); the pairs cover those of them in :data:`PAIR_FAMILIES`."""
    if not 0.0 <= rho <= 1.0:
        raise ConflictError(f"--rho {rho}: the share of wrong chosen replies must be in [0, 1]")
    fams = tuple(families or F.FAMILIES)
    unknown = [f for f in fams if f not in F.FAMILIES]
    pair_fams = tuple(f for f in fams if f in F.PAIR_FAMILIES)
    if unknown or not pair_fams or len(pair_fams) == len(fams):
        raise ConflictError(f"--families {','.join(fams)}: give families of {', '.join(F.FAMILIES)}, at least one of the "
                            f"pair families ({', '.join(F.PAIR_FAMILIES)}) and one other (spill-over)")
    n = {**SIZES, **(sizes or {})}
    rows_ins, source = load_instructions(instructions) if set(fams) & set(F.CONSTRAINTS) else ([], "none needed")
    rng = random.Random(seed)
    # one pool per file: a file's prompts are distinct; SFT and pairs (both train) may share a prompt, as may test and
    # test_pairs (both held out); the splits never share one
    pools = {name: _Pools(split, rows_ins, random.Random(f"{seed}-{name}"))
             for name, split in (("sft", "train"), ("pairs", "train"), ("val", "val"), ("test", "test"),
                                 ("test_pairs", "test"))}
    out: dict[str, list[dict]] = {}
    out["sft"] = [{"prompt": it.prompt, "response": sft_response(it), "family": f, "check": it.check}
                  for f in _balanced(fams, n["sft"], rng) for it in [pools["sft"].draw(f)]]
    out["pairs"] = [_pair(pools["pairs"].draw(f), f, rng.random() < rho) for f in _balanced(pair_fams, n["pairs"], rng)]
    out["val"] = [{"prompt": it.prompt, "reference": it.reference, "family": f, "check": it.check}
                  for f in _balanced(fams, n["val"], rng) for it in [pools["val"].draw(f)]]
    out["test"] = [{"prompt": it.prompt, "reference": it.reference, "family": f, "check": it.check}
                   for f in _balanced(fams, n["test"], rng) for it in [pools["test"].draw(f)]]
    out["test_pairs"] = [_pair(pools["test_pairs"].draw(f), f, rng.random() < rho) for f in _balanced(pair_fams, n["test_pairs"], rng)]
    meta = {"rho": rho, "seed": seed, "sizes": {k: len(v) for k, v in out.items()}, "families": list(fams),
            "pair_families": list(pair_fams), "instructions": source,
            "wrong_pairs": sum(p["wrong"] for p in out["pairs"])}
    return out, meta


def _ours(meta: Path) -> bool:
    try:
        return "pair_families" in json.loads(meta.read_text())
    except (OSError, ValueError, TypeError):
        return False


def write(out_dir: str | Path, rows: dict[str, list[dict]], meta: dict) -> Path:
    """``OUT/<file>.jsonl`` for each of :data:`FILES` and ``OUT/meta.json`` (each written whole, then renamed)."""
    import os

    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not _ours(out / "meta.json"):
        raise ConflictError(f"{out}: not empty and not written by `tandem conflict make`; give a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        tmp = out / f".{name}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows[name]))
        os.replace(tmp, out / f"{name}.jsonl")
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
