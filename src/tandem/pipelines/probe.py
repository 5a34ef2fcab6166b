"""``tandem probe entanglement``: a model and preference pairs -> per-pair gradient entanglement, summary, plots.

Writes OUT/pairs.jsonl, summary.json, summary.md, cosine_hist.png and token_heatmap_*.png. OUT must be new, empty
or an earlier probe's (tandem's marker); it is locked while it is written.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tandem.probes.report import summary_markdown
from tandem.models.sampling import pad_token_id

log = logging.getLogger("tandem")


class ProbeInputError(ValueError):
    """A bad probe input (model, data, settings); the message names the option."""


@dataclass(frozen=True)
class ProbeSettings:
    model: str
    data: str
    out: Path
    params: str = "all"
    pairs: int = 16
    heatmap_pairs: int = 1
    heatmap_tokens: int = 16
    max_length: int = 512
    ratio: float = 1.0
    format: str | None = None
    split: str = "train"
    dtype: str = "float32"
    device: str = "auto"
    chunk_numel: int = 1 << 27


def entanglement(s: ProbeSettings, progress) -> dict:
    """Run the probe; ``progress`` is a rich ``Progress``. Returns the summary (also ``summary.json``)."""
    import torch

    from tandem.data import DataError, PreferenceExample, collate, encode_all, load_examples
    from tandem.models import load_any
    from tandem.io.rundir import check_run_dir, is_run_dir, open_run_dir
    from tandem.probes.entanglement import select_params

    if not s.ratio > 0:
        raise ProbeInputError(f"--ratio must be > 0, got {s.ratio}")
    out = Path(s.out)
    again = is_run_dir(out)  # an earlier probe's output: its files are replaced
    check_run_dir(out, resume=again, overwrite=False)  # before loading anything
    try:
        examples, report = load_examples(s.data, format=s.format, split=s.split, limit=None)
    except (DataError, FileNotFoundError, ValueError) as e:
        raise ProbeInputError(f"--data {s.data}: {e}") from None
    prefs = [e for e in examples if isinstance(e, PreferenceExample)][: s.pairs]
    same = report.skipped.get("identical", 0)
    if not prefs:
        raise ProbeInputError(f"--data {s.data}: no preference pairs " + (
            f"({same} pairs have chosen == rejected: no preference to probe)" if same else
            "(expected chosen/rejected records)"))
    if same:
        log.warning("--data %s: %d pairs with chosen == rejected skipped (no preference to probe)", s.data, same)
    try:
        m, tok = load_any(s.model, dtype=s.dtype)
    except (OSError, ValueError) as e:
        raise ProbeInputError(f"--model {s.model}: {e}") from None
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device)
    m.to(dev)
    feats, stats = encode_all(tok, prefs, s.max_length, "truncate")
    if not feats:
        raise ProbeInputError(f"--data {s.data}: no pair left after encoding with --max-length {s.max_length}")
    try:
        selected = select_params(m, s.params)
    except ValueError as e:
        raise ProbeInputError(f"--params: {e}") from None
    pad_id = pad_token_id(tok)

    def batch_fn(fs):
        return {k: v.to(dev) for k, v in collate(fs, mode="pack", pad_id=pad_id).items()}

    with open_run_dir(out, resume=again, overwrite=False, command="probe", clean=False):
        return _write(s, m, tok, feats, stats, selected, batch_fn, dev, out, progress)


def _write(s: ProbeSettings, m, tok, feats, stats, selected, batch_fn, dev, out: Path, progress) -> dict:
    from tandem.probes.entanglement import entanglement_stats, summarize
    from tandem.probes.plots import plot_entanglement_hist
    from tandem.probes.tokens import plot_token_heatmap, token_cosines

    t0 = time.perf_counter()
    task = progress.add_task("pairs", total=len(feats))
    with open(out / "pairs.jsonl", "w") as live:  # written pair by pair: a long probe keeps what it measured

        def on_pair(i: int, row: dict) -> None:
            live.write(json.dumps(row) + "\n")
            live.flush()
            progress.advance(task)

        rows = entanglement_stats(m, feats, batch_fn, params=s.params, ratio=s.ratio, chunk_numel=s.chunk_numel,
                                  on_pair=on_pair)
    heatmaps = []
    n_heat = min(s.heatmap_pairs, len(feats))
    if n_heat:
        htask = progress.add_task("token heatmaps", total=n_heat)
        for i in range(n_heat):
            res = token_cosines(m, feats[i], batch_fn, params=s.params, max_tokens=s.heatmap_tokens)
            name = f"token_heatmap_{i}.png"
            plot_token_heatmap(res, tok, out / name, title=f"pair {i}: per-token gradient cosine ({s.params}), "
                               f"pair cosine {rows[i]['cosine']:.3f}")
            heatmaps.append(name)
            progress.advance(htask)
    summary = summarize(rows)
    settings = {**{k: v for k, v in asdict(s).items() if k in ("model", "data", "params", "ratio", "max_length",
                                                                "dtype")},
                "n_tensors": len(selected), "n_params": sum(p.numel() for _, p in selected), "device": str(dev),
                "encode": vars(stats), "seconds": time.perf_counter() - t0}
    with open(out / "pairs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (out / "summary.json").write_text(json.dumps({**summary, "settings": settings, "heatmaps": heatmaps}, indent=2))
    plot_entanglement_hist(rows, out / "cosine_hist.png", ratio=s.ratio,
                           title=f"Gradient entanglement: {Path(s.model).name}, {len(rows)} pairs, params {s.params}")
    (out / "summary.md").write_text(summary_markdown(summary, rows, settings, heatmaps))
    return summary
