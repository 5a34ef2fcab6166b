"""The training-time probe of several runs side by side: for each run, the probed pairs' mean chosen / rejected
log-probs at the first and last probe, their change, and the first / last gradient cosine and the share of pairs
whose first-order condition says the chosen log-prob falls (``probe/*`` rows of ``RUN/metrics.jsonl``).

    python benchmarks/probe_table.py runs/entanglement/dpo-s0 runs/entanglement/simpo-s0 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def probes(run: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r for r in rows if "probe/logp_w" in r]


def row(run: Path) -> dict:
    p = probes(run)
    if not p:
        raise SystemExit(f"{run}: no probe rows in metrics.jsonl (probe.every 0?)")
    a, b = p[0], p[-1]
    return {"run": run.name, "probes": len(p), "first_step": a.get("step"), "last_step": b.get("step"),
            "logp_w": (a["probe/logp_w"], b["probe/logp_w"]), "logp_l": (a["probe/logp_l"], b["probe/logp_l"]),
            "cosine": (a["probe/mean_cosine"], b["probe/mean_cosine"]),
            "falls": (a["probe/frac_chosen_falls"], b["probe/frac_chosen_falls"])}


def table(runs: list[Path]) -> str:
    out = ["| run | probes (steps) | chosen logp first → last | change | rejected logp first → last | change | "
           "cosine first → last | chosen-falls share first → last |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in map(row, runs):
        (w0, w1), (l0, l1), (c0, c1), (f0, f1) = r["logp_w"], r["logp_l"], r["cosine"], r["falls"]
        out.append(f"| {r['run']} | {r['probes']} ({r['first_step']}-{r['last_step']}) | {w0:.1f} → {w1:.1f} | "
                   f"{w1 - w0:+.2f} | {l0:.1f} → {l1:.1f} | {l1 - l0:+.2f} | {c0:.3f} → {c1:.3f} | {f0:.2f} → {f1:.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    print(table(ap.parse_args().runs))


if __name__ == "__main__":
    main()
