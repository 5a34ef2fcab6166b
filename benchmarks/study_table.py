"""A readable table of a ``tandem study`` / ``tandem compare`` directory: chosen columns, mean ± std over seeds.

``OUT/table.md`` holds every column the evaluation writes (about 70 for recipes/study); this prints the ones named,
in order, with short headers, for docs/results.md:

    python benchmarks/study_table.py runs/study rouge/rougeL=ROUGE-L reward_win_rate/win_rate=win
    python benchmarks/study_table.py runs/a --also runs/a/more-seeds.json rouge/rougeL=ROUGE-L   # rows of two tables

``--also`` adds the rows of another table.json (a file, or a directory holding one); a (method, seed) row that is
in both is taken from the later file (a study that ran in pieces, each piece writing its own table.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tandem.report.compare import summarize


def cell(s: dict | None, digits: int) -> str:
    if s is None:
        return "-"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def table(rows: list[dict], columns: list[tuple[str, str]], digits: int = 3) -> str:
    summary = summarize(rows, [k for k, _ in columns])
    seeds = {m: sorted({r["seed"] for r in rows if str(r["method"]) == m}) for m in summary}
    out = ["| method | seeds | " + " | ".join(h for _, h in columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for m, per in summary.items():
        out.append(f"| {m} | {','.join(map(str, seeds[m]))} | " + " | ".join(cell(per.get(k), digits) for k, _ in columns) + " |")
    return "\n".join(out)


def merged(tables: list[list[dict]]) -> list[dict]:
    """The rows of several tables, one per (method, seed): a later table's row replaces an earlier one in place."""
    out: dict[tuple[str, int], dict] = {}
    for rows in tables:
        for r in rows:
            out[(str(r["method"]), r["seed"])] = r
    return list(out.values())


def read_table(path: Path) -> list[dict]:
    return json.loads((path / "table.json" if path.is_dir() else path).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a study or compare directory (its table.json)")
    ap.add_argument("columns", nargs="+", help="KEY or KEY=HEADER")
    ap.add_argument("--digits", type=int, default=3)
    ap.add_argument("--also", type=Path, action="append", default=[], help="another table.json (file or directory)")
    args = ap.parse_args()
    rows = merged([read_table(args.out), *map(read_table, args.also)])
    cols = [tuple(c.split("=", 1)) if "=" in c else (c, c) for c in args.columns]
    print(table(rows, cols, args.digits))


if __name__ == "__main__":
    main()
