"""The markdown summary of an entanglement probe (``tandem probe entanglement``)."""

from __future__ import annotations


def summary_markdown(summary: dict, rows: list[dict], settings: dict, heatmaps: list[str]) -> str:
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
