"""``tandem merge``: interpolate a base and a tuned checkpoint and save a normal HF model.

Mounted by ``tandem.cli.main``; also usable alone: ``python -m tandem.cli.merge_cmd --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import console, make_app, parse_list, user_errors

app = make_app()


@app.command("merge")
def merge(
    base: str = typer.Argument(..., help="theta_0: model before preference training (dir, Hub id or LoRA adapter dir)."),
    tuned: str = typer.Argument(..., help="theta_1: model after preference training (dir, Hub id or LoRA adapter dir)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Global weight of the TUNED model (Wise-FT)."),
    alphas: Optional[str] = typer.Option(None, "--alphas", help="One tuned-model weight per group: '0.2,0.5,0.8'."),
    groups: str = typer.Option("block3", "--groups", help="'blockK' (K contiguous groups), 'layerwise', or ranges '0-9,10-19,20-29'."),
    head_alpha: Optional[float] = typer.Option(None, "--head-alpha", help="Weight for final norm + LM head (default: mean of group alphas)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dir for the merged model."),
    mergekit_config: Optional[Path] = typer.Option(None, "--mergekit-config", help="Also write the equivalent mergekit YAML here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier merge in OUT (only a directory tandem wrote)."),
    extrapolate: bool = typer.Option(False, "--extrapolate", help="Allow alphas outside [0, 1] (beyond the two models)."),
) -> None:
    """Merge two checkpoints: theta = (1 - alpha) * base + alpha * tuned, per tensor.

    alpha is the weight of the TUNED model (1 = tuned, 0 = base); some tools use the opposite.

    Embeddings follow the first group; final norm and LM head follow --head-alpha.

    Uneven blockK groups: the first (layers % K) groups get one extra layer.

    Examples:

      tandem merge models/sft runs/dpo/final --alpha 0.5 -o merged/wise-0.5

      tandem merge models/sft runs/dpo-lora/final --alphas 0.2,0.5,0.8 --groups block3 -o merged/hma --mergekit-config merged/hma.yaml
    """
    alpha_list = parse_list("--alphas", alphas, float, "0.2,0.5,0.8") if alphas is not None else None
    with user_errors(out):
        from tandem.api import merge as run_merge
        from tandem.pipelines.merge import check_alphas

        for note in check_alphas(alpha, alpha_list, head_alpha, extrapolate):
            console.print(f"[yellow]warning:[/] {note}")
        record = run_merge(base, tuned, out, alpha=alpha, alphas=alpha_list, groups=groups, head_alpha=head_alpha,
                           mergekit_config=mergekit_config, overwrite=overwrite, extrapolate=extrapolate)
    console.print(f"[green]merged[/] groups {record['groups']} alphas {record['alphas']} "
                  f"head {record['head_alpha']:.4g} -> {out}")


if __name__ == "__main__":  # pragma: no cover
    app()
