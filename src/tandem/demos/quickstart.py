"""``tandem quickstart``: the whole pipeline on a small generated task set, in minutes on a CPU.

1. Writes a small draw of the conflict benchmark (``tandem.data.conflict``, the generator of ``tandem conflict make``
   and of the CPU testbed) on four short-answer families: addition, capital letters, next letter, word reversal.
   The preference pairs cover addition and capital letters (the other two measure spill-over), and their labeller
   prefers a friendly wrong reply ("67" and a sign-off line "Happy to help!") over the plain correct one ("68"), so
   moving towards the preferred style costs accuracy.
2. Evaluates the base model on held-out tasks: pass rate (the benchmark's exact checkers), short-reply rate and
   preferred-style rate (the reply contains "happy to help") of greedy replies, NLL of the reference answers, and
   preference win rate (share of held-out pairs where the model gives the chosen response a higher mean token
   log-prob).
3. Trains ``recipes/quickstart.yaml`` (SmolLM2-135M-Instruct + LoRA) twice on the same data: ``sequential``
   (all SFT, then all DPO) and ``hbat`` (SFT-1, DPO-1, SFT-2, DPO-2 with the modified EWC penalty).
4. Evaluates both the same way (the LoRA adapter merged into the weights: no adapter matmuls while scoring) and
   prints one table: base model, sequential, hbat.

What it costs (docs/benchmarks.md, "Quickstart"): every greedy reply of an evaluation is sampled in one batch
(``tandem.models.sampling``: finished replies leave the batch), the adapters are merged before scoring, and the runs
write no merged copy and no TensorBoard files.

OUTPUT is a tandem run directory (new, empty, or an earlier quickstart's, replaced when ``overwrite``), locked
while the quickstart runs; each method trains in its own run directory OUTPUT/<method>. A directory tandem did
not create is refused before anything is written or loaded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tandem.data.conflict import checks
from tandem.data.conflict.make import make
from tandem.data.types import PreferenceExample, SFTExample, user

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "quickstart.yaml"
DEFAULT_MODEL = Path("models/smollm2-135m-instruct")


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


#: the quickstart's families: short answers (a few new tokens each); pairs on add and upper, spill-over on the others
FAMILIES = ("add", "upper", "next_letter", "reverse")


def build_data(data_dir: Path, n_train: int, n_eval: int, seed: int) -> dict[str, Path]:
    """The conflict benchmark at rho = 1 on :data:`FAMILIES`: ``n_train`` SFT rows and pairs, ``n_eval`` held-out tasks
    (with their checkers) and pairs."""
    rows, _ = make(rho=1.0, seed=seed, families=FAMILIES,
                        sizes={"sft": n_train, "pairs": n_train, "val": 0, "test": n_eval, "test_pairs": n_eval})
    paths = {
        "sft": data_dir / "sft.jsonl",
        "preference": data_dir / "preference.jsonl",
        "eval_tasks": data_dir / "eval_tasks.jsonl",
        "eval_pairs": data_dir / "eval_pairs.jsonl",
    }
    for key, name in (("sft", "sft"), ("preference", "pairs"), ("eval_tasks", "test"), ("eval_pairs", "test_pairs")):
        write_jsonl(paths[key], rows[name])
    return paths


def read_eval(paths: dict[str, Path]) -> tuple[list[dict], list[PreferenceExample]]:
    """The held-out task rows (``prompt, reference, family, check``) and pairs of :func:`build_data`."""
    tasks = [json.loads(x) for x in paths["eval_tasks"].read_text().splitlines()]
    pairs = [PreferenceExample(prompt=user(r["prompt"]), chosen=r["chosen"], rejected=r["rejected"])
             for r in map(json.loads, paths["eval_pairs"].read_text().splitlines())]
    return tasks, pairs


@torch.no_grad()
def task_scores(model, tok, tasks: list[dict], max_new_tokens: int = 12) -> dict[str, float]:
    """Greedy replies to held-out tasks: pass rate (each row's checker), the share of short replies (one line of at
    most three words besides the closing line, as the prompts ask: the format SFT teaches) and the share in the labeller's preferred style
    (contains "happy to help": what the preference data teaches)."""
    from tandem.evaluation.generation import generate

    outs = generate(model, tok, [user(t["prompt"]) for t in tasks], temperature=0.0, max_new_tokens=max_new_tokens,
                    batch_size=len(tasks))  # one batch: replies that end early leave it
    short = [len(b) == 1 and len(b[0].split()) <= 3 for b in map(checks.body, outs)]
    return {
        "pass_rate": sum(checks.passes(t["check"], o) for o, t in zip(outs, tasks)) / len(tasks),
        "short_reply_rate": sum(short) / len(tasks),
        "preferred_style_rate": sum(checks.friendly(o) for o in outs) / len(tasks),
    }


@torch.no_grad()
def answer_nll(model, tok, tasks: list[dict], max_length: int = 256) -> float:
    """Mean token NLL of the reference answers of held-out tasks (lower is better)."""
    from tandem.data import collate, encode_all
    from tandem.objectives.logprobs import sequence_logps

    examples = [SFTExample(prompt=user(t["prompt"]), response=t["reference"]) for t in tasks]
    feats, _ = encode_all(tok, examples, max_length, "truncate")
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(feats), 16):
        chunk = feats[i : i + 16]
        s, n = sequence_logps(model, collate(chunk, mode="pack", pad_id=tok.pad_token_id, max_tokens_per_row=max_length),
                              num_seqs=len(chunk))
        total, count = total - float(s.sum()), count + int(n.sum())
    return total / max(count, 1)


@torch.no_grad()
def preference_win_rate(model, tok, pairs: list, max_length: int = 256) -> float:
    """Share of pairs where the mean token log-prob of the chosen response beats the rejected one."""
    from tandem.data import collate, encode_all
    from tandem.objectives.logprobs import sequence_logps

    feats, _ = encode_all(tok, pairs, max_length, "truncate")
    wins = 0
    model.eval()
    for i in range(0, len(feats), 16):
        chunk = feats[i : i + 16]
        batch = collate(chunk, mode="pack", pad_id=tok.pad_token_id, max_tokens_per_row=max_length,
                        prefix_sharing=True)  # the prompt once per pair: same log-probs, about half the tokens
        s, n = sequence_logps(model, batch, num_seqs=2 * len(chunk))
        mean = s / n.clamp(min=1)
        b = len(chunk)
        wins += int((mean[:b] > mean[b:]).sum())
    return wins / len(feats)


def evaluate(model, tok, tasks, pairs, precision: str = "auto") -> dict[str, float]:
    """Every score, with the weights in the dtype training used (``precision: auto``: bf16 on a CPU or GPU with native
    bf16, which halves the evaluation's time on such a CPU)."""
    from tandem.models.precision import resolve

    weights = resolve(precision, device=next(model.parameters()).device.type).weights
    if weights is not None:
        model.to(weights)
    return {**task_scores(model, tok, tasks), "answer_nll": answer_nll(model, tok, tasks),
            "preference_win_rate": preference_win_rate(model, tok, pairs)}


def run_quickstart(output_dir: Path, model: str | None = None, overwrite: bool = True, n_train: int = 48,
                   n_eval: int = 32, methods: tuple[str, ...] = ("sequential", "hbat"), precision: str = "auto") -> dict:
    """Evaluate the base model, train each method on the same data (OUTPUT/<method>), evaluate each, print a
    table and write OUTPUT/quickstart.json. ``precision`` (the recipe's field, for training and scoring): ``fp32``
    times a CPU without native bf16 on one that has it."""
    from tandem.io.rundir import RunDirError, check_run_dir, is_run_dir, open_run_dir
    from tandem.models import check_exists

    output_dir = Path(output_dir)
    if is_run_dir(output_dir) and not overwrite:
        raise RunDirError(f"{output_dir} holds an earlier tandem run: pass --overwrite to replace it or choose another -o")
    check_run_dir(output_dir, resume=False, overwrite=True)  # a file or a directory tandem did not create: refused
    if model:
        check_exists(model, "--model")
    with open_run_dir(output_dir, resume=False, overwrite=overwrite, command="quickstart",
                      inputs={"--model": model} if model else None):
        return _run(output_dir, model, n_train, n_eval, methods, precision)


def _run(output_dir: Path, model: str | None, n_train: int, n_eval: int, methods: tuple[str, ...],
         precision: str = "auto") -> dict:
    from tandem.config.recipe import load_recipe
    from tandem.pipelines.train import train
    from tandem.models import load_policy, pull_smollm2
    from tandem.models.merged import load_merged

    console = Console()
    t0 = time.perf_counter()
    model_path = Path(model) if model else DEFAULT_MODEL
    if not model and not (model_path / "config.json").exists():
        console.print(f"[bold]Model not found at {model_path}: pulling SmolLM2-135M-Instruct (once)...")
        pull_smollm2(model_path)
    seed = 0
    data_dir = output_dir / "data"
    paths = build_data(data_dir, n_train, n_eval, seed)
    eval_tasks, eval_pairs = read_eval(paths)
    n_steps = len(methods) + 2

    console.print(f"[bold]1/{n_steps}[/] evaluating the base model")
    base, tok = load_policy(str(model_path))
    scores = {"base": evaluate(base, tok, eval_tasks, eval_pairs, precision)}
    del base
    steps = {}
    for i, method in enumerate(methods):
        console.print(f"[bold]{i + 2}/{n_steps}[/] training {method} (recipes/quickstart.yaml)")
        recipe = load_recipe(RECIPE, [
            f"output_dir={output_dir / method}",
            f"model.name_or_path={model_path}",
            f"data.sft.source={paths['sft']}",
            f"data.preference.source={paths['preference']}",
            f"schedule.method={method}",
            f"precision={precision}",
        ])
        summary = train(recipe, resume=False, overwrite=False)  # OUTPUT was just created or emptied
        steps[method] = summary["global_steps"]
        tuned, tok2 = load_merged(output_dir / method / "final")  # the adapter merged: no LoRA matmuls when scoring
        scores[method] = evaluate(tuned, tok2, eval_tasks, eval_pairs, precision)
        del tuned

    console.print(f"[bold]{n_steps}/{n_steps}[/] done")
    table = Table(title="tandem quickstart: SmolLM2-135M-Instruct + LoRA, held-out tasks and pairs")
    table.add_column("metric")
    for name in scores:
        table.add_column(name if name == "base" else f"{name} ({steps[name]} steps)", justify="right")
    for k in scores["base"]:
        table.add_row(k + (" (lower is better)" if k == "answer_nll" else ""), *[f"{scores[n][k]:.3f}" for n in scores])
    console.print(table)
    result = {"scores": scores, "steps": steps, "seconds": time.perf_counter() - t0, "n_train": n_train, "n_eval": n_eval,
              "precision": precision}
    (output_dir / "quickstart.json").write_text(json.dumps(result, indent=2))
    console.print(f"total time {result['seconds']:.0f}s; runs and results in {output_dir}/")
    return result
