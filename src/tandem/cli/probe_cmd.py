"""``tandem probe``: measurements of a model that do not train it (thin glue over tandem.probes).

Mounted by ``tandem.cli.main`` as the ``probe`` sub-command; also usable alone:
``python -m tandem.cli.probe_cmd --help``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="Probe a model: gradient entanglement of preference pairs.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


def load_probe_model(model: str, dtype: str = "float32"):
    """``(model, tokenizer)`` from a run dir (its ``final/``), a LoRA adapter dir, a full model dir, a ``.gguf``
    file or a Hub id."""
    from tandem.models import load_policy, load_saved

    p = Path(model)
    if p.is_dir() and not (p / "config.json").exists() and not (p / "adapter_config.json").exists() and (p / "final").is_dir():
        p = p / "final"
    if str(p).endswith(".gguf"):
        return load_policy(str(p), dtype=dtype)
    if p.is_dir():
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise ValueError(f"{p}: not a model dir (no config.json or adapter_config.json) nor a run dir with final/")
        return load_saved(p, dtype=dtype)
    return load_policy(model, dtype=dtype)


def _summary_md(summary: dict, rows: list[dict], settings: dict, heatmaps: list[str]) -> str:
    s = summary
    lines = [
        "# Gradient entanglement", "",
        f"Model `{settings['model']}`, data `{settings['data']}`, parameters `{settings['params']}` "
        f"({settings['n_params']:,} values in {settings['n_tensors']} tensors), ratio d_w/d_l = {settings['ratio']:g}.", "",
        "First order, for a step along d_w g_w - d_l g_l: the chosen log-prob falls when <g_w,g_l> > ratio ||g_w||^2, "
        "the rejected one rises when <g_w,g_l> > ||g_l||^2 / ratio.", "",
        "| quantity | value |", "|---|---|",
    ]
    for k in ("pairs", "mean_cosine", "median_cosine", "mean_dot", "mean_norm_w", "mean_norm_l",
              "frac_chosen_falls", "frac_rejected_rises", "frac_either", "mean_logp_w", "mean_logp_l"):
        v = s[k]
        lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += ["", "## Pairs", "", "| # | cosine | dot | norm_w | norm_l | chosen falls | rejected rises | logp_w | logp_l |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows[:50]:
        lines.append(f"| {r['index']} | {r['cosine']:.4f} | {r['dot']:.4g} | {r['norm_w']:.4g} | {r['norm_l']:.4g} | "
                     f"{'yes' if r['chosen_falls'] else 'no'} | {'yes' if r['rejected_rises'] else 'no'} | "
                     f"{r['logp_w']:.3f} | {r['logp_l']:.3f} |")
    if len(rows) > 50:
        lines.append(f"| ... | {len(rows) - 50} more pairs in pairs.jsonl | | | | | | | |")
    lines += ["", "![cosines](cosine_hist.png)", ""] + [f"![{h}]({h})" for h in heatmaps]
    return "\n".join(lines) + "\n"


@app.command("entanglement")
def entanglement(
    model: str = typer.Option(..., "--model", "-m", help="Model: run dir, LoRA adapter dir, model dir, .gguf file or Hub id."),
    data: str = typer.Option(..., "--data", "-d", help="Preference pairs (any format tandem reads: prompt/chosen/rejected JSONL, HH-RLHF, ...)."),
    params: str = typer.Option("all", "--params", help="'all', 'lora' (names containing lora_) or a regex on parameter names."),
    pairs: int = typer.Option(64, "--pairs", "-k", min=1, help="Number of pairs (the first K)."),
    out: Path = typer.Option(Path("probe-entanglement"), "--out", "-o", help="Output directory."),
    heatmap_pairs: int = typer.Option(3, "--heatmap-pairs", min=0, help="Per-token heatmaps for the first N pairs."),
    heatmap_tokens: int = typer.Option(32, "--heatmap-tokens", min=1, help="Tokens per response in a heatmap."),
    max_length: int = typer.Option(512, "--max-length", min=8, help="Tokens per sequence (prompt + response); longer pairs are truncated."),
    ratio: float = typer.Option(1.0, "--ratio", help="d_w / d_l, the loss's weight ratio (1 for DPO)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Declare the data format instead of detecting it."),
    split: str = typer.Option("train", "--split"),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16, float16 or auto."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:1, ..."),
    chunk_numel: int = typer.Option(1 << 27, "--chunk-numel", min=1, help="Max gradient values held per chunk (memory knob)."),
) -> None:
    """Measure gradient entanglement of preference pairs: per pair <g_w, g_l>, norms, cosine and whether a DPO-like
    step would lower the chosen or raise the rejected log-prob. Writes OUT/pairs.jsonl, summary.json,
    summary.md, cosine_hist.png and token_heatmap_*.png.

    Examples:

      tandem probe entanglement --model models/smollm2-135m-instruct --data pairs.jsonl --pairs 64 -o runs/probe

      tandem probe entanglement --model runs/dpo-lora --data pairs.jsonl --params lora --heatmap-pairs 0

      tandem probe entanglement -m runs/dpo/final -d pairs.jsonl --params 'layers\\.(2[0-9])\\.' -o runs/probe-top
    """
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tandem.data import DataError, PreferenceExample, collate, encode_all, load_examples
    from tandem.probes.entanglement import entanglement_stats, select_params, summarize
    from tandem.probes.plots import plot_entanglement_hist
    from tandem.probes.tokens import plot_token_heatmap, token_cosines

    if not ratio > 0:
        _fail(f"--ratio must be > 0, got {ratio}")
    try:
        m, tok = load_probe_model(model, dtype=dtype)
    except (OSError, ValueError) as e:
        _fail(f"--model {model}: {e}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    m.to(dev)
    try:
        examples, _ = load_examples(data, format=fmt, split=split, limit=None)
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(f"--data {data}: {e}")
    prefs = [e for e in examples if isinstance(e, PreferenceExample)][:pairs]
    if not prefs:
        _fail(f"--data {data}: no preference pairs (expected chosen/rejected records)")
    feats, stats = encode_all(tok, prefs, max_length, "truncate")
    if not feats:
        _fail(f"--data {data}: no pair left after encoding with --max-length {max_length}")
    try:
        selected = select_params(m, params)
    except ValueError as e:
        _fail(f"--params: {e}")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def batch_fn(fs):
        return {k: v.to(dev) for k, v in collate(fs, mode="pack", pad_id=pad_id).items()}

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_heat = min(heatmap_pairs, len(feats))
    heatmaps = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as prog:
        task = prog.add_task("pairs", total=len(feats))
        rows = entanglement_stats(m, feats, batch_fn, params=params, ratio=ratio, chunk_numel=chunk_numel,
                                  on_pair=lambda i: prog.advance(task))
        if n_heat:
            htask = prog.add_task("token heatmaps", total=n_heat)
            for i in range(n_heat):
                res = token_cosines(m, feats[i], batch_fn, params=params, max_tokens=heatmap_tokens)
                name = f"token_heatmap_{i}.png"
                plot_token_heatmap(res, tok, out / name, title=f"pair {i}: per-token gradient cosine ({params}), "
                                   f"pair cosine {rows[i]['cosine']:.3f}")
                heatmaps.append(name)
                prog.advance(htask)
    summary = summarize(rows)
    settings = {"model": model, "data": data, "params": params, "ratio": ratio, "max_length": max_length,
                "n_tensors": len(selected), "n_params": sum(p.numel() for _, p in selected), "device": str(dev),
                "dtype": dtype, "encode": vars(stats), "seconds": time.perf_counter() - t0}
    with open(out / "pairs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (out / "summary.json").write_text(json.dumps({**summary, "settings": settings, "heatmaps": heatmaps}, indent=2))
    plot_entanglement_hist(rows, out / "cosine_hist.png", ratio=ratio,
                           title=f"Gradient entanglement: {Path(model).name}, {len(rows)} pairs, params {params}")
    (out / "summary.md").write_text(_summary_md(summary, rows, settings, heatmaps))
    console.print(f"mean cosine {summary['mean_cosine']:.3f}, chosen falls in {summary['frac_chosen_falls']:.0%} of "
                  f"pairs, rejected rises in {summary['frac_rejected_rises']:.0%} -> {out}/summary.md")


if __name__ == "__main__":  # pragma: no cover
    app()
