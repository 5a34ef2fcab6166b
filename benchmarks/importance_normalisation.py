"""How each normalisation of the accumulated change turns into HBAT importance F.

Realistic per-stage changes of a fine-tuned LM are tiny and spread over orders of magnitude. We draw 30
tensors with C_i log-uniform in [1e-12, 1e-9] and print, for each normalisation, the max/min ratio of F and
its entropy (log 30 = 3.401 means uniform, 0 means one-hot). "none" comes out uniform, "scale 1e20"
one-hot; the default of tandem.regularizers.ewc is "zscore" at temperature 1. "log" (F ∝ AC^(1/T)) and "rank"
(contrast e^(1/T)) are the scale-free alternatives (real-model numbers: benchmarks/importance_real.py). Run: ``python benchmarks/importance_normalisation.py``.
"""

from __future__ import annotations

import math
import random

from tandem.regularizers.ewc import importance


def entropy(p: list[float]) -> float:
    s = sum(p)
    return -sum(x / s * math.log(x / s) for x in p if x > 0)


def main(n: int = 30, seeds: int = 5) -> None:
    settings = [
        ("none", 1.0, {}),
        ("mean", 1.0, {}),
        ("mean", 0.5, {}),
        ("zscore", 1.0, {}),
        ("zscore", 0.5, {}),
        ("scale", 1.0, {"scale": 1e20}),
        ("log", 1.0, {}),
        ("log", 0.5, {}),
        ("rank", 0.1, {}),
        ("rank", 0.2, {}),
    ]
    print(f"{n} tensors, C ~ log-uniform[1e-12, 1e-9]; uniform entropy = {math.log(n):.3f}")
    print(f"{'normalise':>10} {'temp':>5} {'max/min F':>14} {'entropy':>8} {'top-1 share':>11}")
    for norm, temp, kw in settings:
        ratios, ents, tops = [], [], []
        for seed in range(seeds):
            rng = random.Random(seed)
            ac = {f"t{i}": 10 ** rng.uniform(-12, -9) for i in range(n)}
            f = list(importance(ac, f_max=1.0, normalise=norm, temperature=temp, **kw).values())
            lo = min(f)
            ratios.append(max(f) / lo if lo > 0 else float("inf"))
            ents.append(entropy(f))
            tops.append(max(f))
        r = sum(ratios) / seeds
        print(f"{norm:>10} {temp:>5} {r:>14.6g} {sum(ents) / seeds:>8.3f} {sum(tops) / seeds:>11.3f}")


if __name__ == "__main__":
    main()
