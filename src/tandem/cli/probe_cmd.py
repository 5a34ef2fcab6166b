"""``tandem probe``: measurements of a model that do not train it (pipelines.probe).

Mounted by ``tandem.cli.main`` as the ``probe`` sub-command; also usable alone:
``python -m tandem.cli.probe_cmd --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import console, make_app, user_errors

app = make_app(help="Probe a model: gradient entanglement of preference pairs.", no_args_is_help=True)


@app.command("entanglement")
def entanglement(
    model: str = typer.Option(..., "--model", "-m", help="Model: run dir, LoRA adapter dir, model dir, .gguf file or Hub id."),
    data: str = typer.Option(..., "--data", "-d", help="Preference pairs (any format tandem reads: prompt/chosen/rejected JSONL, HH-RLHF, ...)."),
    params: str = typer.Option("all", "--params", help="'all', 'lora' (names containing lora_) or a regex on parameter names."),
    pairs: int = typer.Option(16, "--pairs", "-k", min=1, help="Number of pairs (the first K); each costs two backward passes."),
    out: Path = typer.Option(Path("probe-entanglement"), "--out", "-o", help="Output directory (new, empty or an earlier probe's)."),
    heatmap_pairs: int = typer.Option(1, "--heatmap-pairs", min=0, help="Per-token heatmaps for the first N pairs (one backward per token: the slow part)."),
    heatmap_tokens: int = typer.Option(16, "--heatmap-tokens", min=1, help="Tokens per response in a heatmap."),
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tandem.api import probe as run_probe

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with user_errors(out), Progress(*columns, console=console) as prog:
        summary = run_probe(model, data, out, progress=prog, params=params, pairs=pairs, heatmap_pairs=heatmap_pairs,
                            heatmap_tokens=heatmap_tokens, max_length=max_length, ratio=ratio, format=fmt, split=split,
                            dtype=dtype, device=device, chunk_numel=chunk_numel)
    console.print(f"mean cosine {summary['mean_cosine']:.3f}, chosen falls in {summary['frac_chosen_falls']:.0%} of "
                  f"pairs, rejected rises in {summary['frac_rejected_rises']:.0%} -> {out}/summary.md")


if __name__ == "__main__":  # pragma: no cover
    app()
