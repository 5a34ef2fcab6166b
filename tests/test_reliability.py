"""What tandem promises about a user's files and errors (docs/reliability.md), outside ``tandem train``'s own rows:

* no checkpoint is ever written from non-finite weights; the error names the last finite checkpoint or says none
  exists (engine/checkpoint.py; lr 30 on the tiny model diverges within a few steps);
* user errors are one ``error:`` line with exit code 2 -- the LLM judge's HTTP 401/500, a full disk, a diverged run
  -- while a bug keeps its traceback, and ``--debug`` / ``TANDEM_DEBUG=1`` show it for a user error too;
* every command that writes a directory marks it as tandem's and holds its lock: a second writer is refused with
  the first one's pid; ``merge --overwrite`` and ``quickstart`` replace only directories tandem wrote.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from helpers_evaluation import tiny_lm
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tandem.cli.common import set_debug, user_message
from tandem.cli.main import app
from tandem.engine import checkpoint as ckpt
from tandem.engine.loop import TrainingDiverged
from tandem.io.rundir import LOCK, MARKER, RunLock, is_run_dir, write_marker

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.delenv("TANDEM_DEBUG", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    set_debug(False)  # a standalone sub-app (merge_cmd.app) does not reset what `tandem --debug` set


def invoke(args: list) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]


def finite_on_disk(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path / "trainable.safetensors")).values())


def recipe_file(tmp: Path, model: Path, files: dict, **over) -> Path:
    raw = {
        "name": "rel", "output_dir": str(tmp / "run"), "seed": 0, "precision": "fp32",
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"sft": {"source": str(files["sft"])}, "preference": {"source": str(files["preference"])},
                 "max_length": 64, "val_size": 0},
        "batching": {"mode": "pack", "batch_size": 4},
        "optimizer": {"lr": 1e-3},
        "schedule": {"method": "sft", "epochs": 1, "max_steps_per_stage": 2},
        "objectives": {"sft": {"name": "sft"}, "preference": {"name": "dpo", "beta": 0.1}},
        "checkpoint": {"every": 1, "keep": 10},
        "logging": {"progress": False, "tensorboard": False},
        "eval": {"data": {"source": str(files["sft"]), "limit": 2}, "max_new_tokens": 2, "batch_size": 2,
                 "temperature": 0.0},
    }
    for k, v in over.items():
        node = raw
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------- finite checkpoints


def state(step: int) -> dict:
    return {"stage_index": 0, "stage_name": "01-sft", "stage_step": step, "global_step": step, "stage_done": False,
            "metrics_offset": 0}


def test_nonfinite_weights_write_no_checkpoint_and_say_none_exists(tmp_path):
    model, _ = tiny_lm()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
        model.lm_head.weight[3, 1] = float("inf")
    root = tmp_path / "checkpoints"
    with pytest.raises(TrainingDiverged) as info:
        ckpt.save_checkpoint(root, model, None, None, None, state(1), keep=2)
    msg = str(info.value)
    n = sum(1 for p in model.parameters() if p.requires_grad)
    assert f"non-finite weights in 2 of {n} trainable tensors" in msg
    assert "model.layers.1.mlp.up_proj.weight" in msg and "lm_head.weight" in msg
    assert "checkpoint stage00-step000001 was not written" in msg and "no finite checkpoint exists" in msg
    assert not root.exists() or not any(root.iterdir())  # not even a temporary directory


def test_nonfinite_weights_name_the_last_finite_checkpoint(tmp_path):
    model, _ = tiny_lm()
    root = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(root, model, None, None, None, state(1), keep=5)
    second = ckpt.save_checkpoint(root, model, None, None, None, state(2), keep=5)
    # a checkpoint with a NaN on disk (as older versions wrote them) is not "finite": it is skipped
    bad = load_file(str(second / "trainable.safetensors"))
    next(iter(bad.values()))[0] = float("nan")
    save_file(bad, str(second / "trainable.safetensors"))
    assert ckpt.last_finite_checkpoint(root) == first
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=rf"the last finite checkpoint is {first} \(global step 1\).*--resume"):
        ckpt.save_checkpoint(root, model, None, None, None, state(3), keep=5)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["stage00-step000001", "stage00-step000002"]


def test_assert_finite_checks_only_trainable_tensors(tmp_path):
    model, _ = tiny_lm()
    ckpt.assert_finite(model, "final/")  # finite: nothing raised
    model.model.norm.weight.requires_grad_(False)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")  # frozen: never trained, never saved as a trainable tensor
    ckpt.assert_finite(model, "final/")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[1, 1] = float("-inf")
    with pytest.raises(TrainingDiverged, match=r"\(e\.g\. model\.layers\.0\.self_attn\.q_proj\.weight\): final/ was not "
                                               r"written; no finite checkpoint exists"):
        ckpt.assert_finite(model, "final/", tmp_path / "none")
    assert ckpt.nonfinite([torch.zeros(0), torch.tensor([1.0, float("nan")]), torch.ones(3, dtype=torch.bfloat16),
                           torch.tensor([float("inf")], dtype=torch.float16), torch.full((2,), 3e38)]) == [1, 3]


def test_lr_30_stops_with_exit_2_and_every_checkpoint_on_disk_is_finite(tmp_path, tiny_model_dir, synthetic_files):
    """The issue's case: a constant lr of 30 without clipping turns weights to NaN/inf while the loss is still
    finite; a checkpoint every step would have saved them."""
    recipe = recipe_file(tmp_path, tiny_model_dir, synthetic_files, **{
        "optimizer.lr": 30.0, "optimizer.scheduler": "constant", "optimizer.max_grad_norm": None,
        "schedule.max_steps_per_stage": 10})
    code, out = invoke(["train", recipe])
    line = error_line(out)
    assert code == 2 and "non-finite weights in" in line and "trainable tensors" in line
    run = tmp_path / "run"
    on_disk = ckpt.list_checkpoints(run / "checkpoints")
    assert on_disk and all(finite_on_disk(p) for p in on_disk)
    step = ckpt.read_state(on_disk[-1])["global_step"]
    assert f"checkpoint stage00-step{step + 1:06d} was not written" in line
    assert f"the last finite checkpoint is {on_disk[-1]} (global step {step})" in line and "--resume" in line
    assert not (run / "final").exists()


# ------------------------------------------------------------------------------------- one-line errors


class Judge(BaseHTTPRequestHandler):
    status = 401

    def do_POST(self):  # noqa: N802
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "nope"}')

    def log_message(self, *a):
        pass


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, says", [(401, "HTTP 401"), (500, "HTTP 500")])
def test_judge_http_errors_are_one_line(status, says, judge_server, tmp_path, tiny_model_dir, synthetic_files,
                                        monkeypatch):
    import tandem.evaluation.judge as judge_mod

    monkeypatch.setattr(Judge, "status", status)
    monkeypatch.setattr(judge_mod.time, "sleep", lambda s: None)  # 5xx is retried with backoff
    monkeypatch.delenv("TANDEM_TEST_NO_KEY", raising=False)
    url = f"http://127.0.0.1:{judge_server.server_address[1]}/v1"
    recipe = recipe_file(tmp_path, tiny_model_dir, synthetic_files, **{
        "eval.judge": {"base_url": url, "model": "j", "api_key_env": "TANDEM_TEST_NO_KEY", "max_workers": 1}})
    out_dir = tmp_path / "ev"
    code, out = invoke(["eval", tiny_model_dir, "--recipe", recipe, "--metrics", "judge_win_rate", "-o", out_dir])
    for t in threading.enumerate():  # a judge worker may have started the next pair before the pool was cancelled
        if t.name.startswith("ThreadPoolExecutor"):
            t.join(timeout=30)
    line = error_line(out)
    assert code == 2 and says in line and f"{url}/chat/completions" in line
    assert "rerun" in line  # what to do
    if status == 401:
        assert "TANDEM_TEST_NO_KEY" in line  # the key variable to set
    assert is_run_dir(out_dir) and (out_dir / "generations.jsonl").exists()  # kept for the rerun


def test_disk_full_is_one_line_naming_the_path(tmp_path, tiny_model_dir, synthetic_files, monkeypatch):
    def full(tensors, filename, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(ckpt, "save_file", full)
    recipe = recipe_file(tmp_path, tiny_model_dir, synthetic_files)
    code, out = invoke(["train", recipe])
    line = error_line(out)
    assert code == 2 and line.startswith(f"error: disk full: {tmp_path / 'run' / 'checkpoints'}")
    assert "trainable.safetensors" in line and "free some space" in line and "--resume" in line
    # nothing half-written stays behind: the temporary checkpoint directory was removed
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


def test_disk_full_reports_of_torch_and_safetensors_are_recognised():
    torch_msg = RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0")
    from safetensors import SafetensorError  # the real type (not an OSError), with the message of a full tmpfs

    st_msg = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    for e in (torch_msg, st_msg):
        assert user_message(e, "runs/x") == "disk full: runs/x: free some space, then continue with --resume " \
                                            "(finished checkpoints are kept)"


def _raise_in(module: str, exc: BaseException):
    scope = {"__name__": module, "exc": exc}
    exec("def f():\n    raise exc\n", scope)
    try:
        scope["f"]()
    except BaseException as e:  # noqa: BLE001
        return e


def test_user_errors_are_told_apart_from_bugs():
    assert user_message(_raise_in("tandem.pipelines.x", ValueError("lr must be > 0"))) == "lr must be > 0"
    assert user_message(_raise_in("json.decoder", ValueError("Expecting value"))) is None  # raised by a library: a bug
    assert user_message(_raise_in("tandem.x", KeyError("labels"))) is None
    assert user_message(_raise_in("tandem.x", RuntimeError("boom"))) is None
    hub = _raise_in("transformers.utils.hub", OSError("x/y is not a local folder and is not a valid model identifier"))
    assert user_message(hub) == "x/y is not a local folder and is not a valid model identifier"
    assert user_message(_raise_in("tandem.x", OSError("odd"))) is None
    assert user_message(FileNotFoundError("model not found: /nope")) == "model not found: /nope"
    assert user_message(TrainingDiverged("non-finite loss")) == "non-finite loss"


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import tandem.pipelines.evaluate as ev

    def bug(*a, **k):
        return {}["missing"]

    monkeypatch.setattr(ev, "eval_target", bug)
    res = CliRunner().invoke(app, ["eval", str(tmp_path)])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    res = CliRunner().invoke(app, ["models", "info", str(missing)])
    assert res.exit_code == 2 and "not found" in error_line(res.output)
    res = CliRunner().invoke(app, ["--debug", "models", "info", str(missing)])
    assert res.exit_code == 1 and isinstance(res.exception, FileNotFoundError)
    monkeypatch.setenv("TANDEM_DEBUG", "1")
    res = CliRunner().invoke(app, ["models", "info", str(missing)])
    assert isinstance(res.exception, FileNotFoundError)
    # as a user sees it: a real process, stderr
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("TANDEM_DEBUG", None)
    cmd = [sys.executable, "-m", "tandem.cli.main"]
    plain = subprocess.run([*cmd, "train", str(tmp_path / "r.yaml")], capture_output=True, text=True, env=env)
    assert plain.returncode == 2 and plain.stderr.strip() == f"error: {tmp_path / 'r.yaml'}: recipe not found"
    debug = subprocess.run([*cmd, "--debug", "train", str(tmp_path / "r.yaml")], capture_output=True, text=True, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "RecipeError" in debug.stderr


def test_help_imports_no_torch():
    code = "import sys; import tandem.cli.main; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


# ------------------------------------------------------------------------------------- run directories


@pytest.fixture
def inputs(tmp_path, tiny_model_dir, synthetic_files):
    recipe = recipe_file(tmp_path, tiny_model_dir, synthetic_files)
    tax = yaml.safe_load(recipe.read_text())
    tax["tax"] = {"tuned": str(tiny_model_dir), "reward_model": str(tiny_model_dir), "out": str(tmp_path / "out"),
                  "prompts": {"source": str(synthetic_files["sft"]), "limit": 2}}
    (tmp_path / "tax.yaml").write_text(yaml.safe_dump(tax))
    return {"recipe": recipe, "tax": tmp_path / "tax.yaml", "model": tiny_model_dir, "pairs": synthetic_files["preference"]}


WRITERS = {
    "compare": lambda i, out: ["compare", i["recipe"], "--methods", "sft", "-o", out],
    "tax": lambda i, out: ["tax", i["tax"], "--no-progress"],
    "eval": lambda i, out: ["eval", i["model"], "--recipe", i["recipe"], "--metrics", "exact_match", "-o", out],
    "quickstart": lambda i, out: ["quickstart", "-o", out, "--model", i["model"]],
    "merge": lambda i, out: ["merge", i["model"], i["model"], "--alpha", "0.5", "--groups", "block2", "-o", out],
    "probe": lambda i, out: ["probe", "entanglement", "-m", i["model"], "-d", i["pairs"], "--pairs", "1", "-o", out],
    "testbed": lambda i, out: ["testbed", out],
}


@pytest.mark.parametrize("command", list(WRITERS))
def test_second_writer_is_refused_with_the_first_ones_pid(command, inputs, tmp_path):
    out = tmp_path / "out"
    with RunLock(out):  # another tandem process is writing OUT
        code, text = invoke(WRITERS[command](inputs, out))
    line = error_line(text)
    assert code == 2 and f"{out} is being written by another tandem process (pid {os.getpid()})" in line
    assert [p.name for p in out.iterdir()] == [LOCK]  # nothing written into it


def test_merge_output_is_marked_and_only_tandems_is_replaced(tmp_path, tiny_model_dir):
    out = tmp_path / "merged"
    code, text = invoke(["merge", tiny_model_dir, tiny_model_dir, "--alpha", "0.5", "--groups", "block2", "-o", out])
    assert code == 0, text
    assert is_run_dir(out) and json.loads((out / MARKER).read_text())["command"] == "merge"
    (out / "stale.txt").write_text("from the first merge\n")
    code, text = invoke(["merge", tiny_model_dir, tiny_model_dir, "--alpha", "0.25", "--groups", "block2", "-o", out,
                         "--overwrite"])
    assert code == 0, text
    assert not (out / "stale.txt").exists() and json.loads((out / "tandem_merge.json").read_text())["alphas"] == [0.25] * 2
    user = tmp_path / "user-model"  # a model folder of the user's: --overwrite does not touch it
    user.mkdir()
    (user / "config.json").write_text("{}")
    code, text = invoke(["merge", tiny_model_dir, tiny_model_dir, "--alpha", "0.5", "-o", user, "--overwrite"])
    assert code == 2 and "not created by tandem" in error_line(text)
    assert [p.name for p in user.iterdir()] == ["config.json"]


def test_eval_output_is_marked_and_keeps_its_caches(tmp_path, inputs):
    out = tmp_path / "ev"
    args = ["eval", inputs["model"], "--recipe", inputs["recipe"], "--metrics", "exact_match", "-o", out]
    code, text = invoke(args)
    assert code == 0, text
    assert is_run_dir(out) and (out / "results.json").exists()
    (out / "judge_cache.jsonl").write_text('{"key": "k", "verdict": "A", "reply": "Preferred: A"}\n')
    code, text = invoke(args)
    assert code == 0, text
    assert (out / "judge_cache.jsonl").read_text().startswith('{"key": "k"')  # a second evaluation keeps it


def test_quickstart_replaces_only_an_earlier_quickstart(tmp_path, monkeypatch, tiny_model_dir):
    import tandem.demos.quickstart as qs

    seen = []
    monkeypatch.setattr(qs, "_run", lambda out, *a: seen.append(sorted(p.name for p in out.iterdir())) or {})
    out = tmp_path / "qs"
    out.mkdir()
    write_marker(out, "quickstart")
    (out / "hbat").mkdir()
    (out / "hbat" / "old.txt").write_text("an earlier quickstart's file\n")
    code, text = invoke(["quickstart", "-o", out, "--model", tiny_model_dir])
    assert code == 0, text
    assert seen == [[LOCK, MARKER]]  # the earlier quickstart was cleared, the lock held while it ran
    user = tmp_path / "mine"
    (user / "hbat").mkdir(parents=True)
    (user / "hbat" / "precious.txt").write_text("keep\n")
    code, text = invoke(["quickstart", "-o", user, "--model", tiny_model_dir])
    assert code == 2 and f"{user} exists, is not empty and was not created by tandem" in error_line(text)
    assert (user / "hbat" / "precious.txt").read_text() == "keep\n" and len(seen) == 1


def test_compare_marks_its_directory_and_each_run(tmp_path, inputs):
    out = tmp_path / "cmp"
    code, text = invoke(["compare", inputs["recipe"], "--methods", "sft", "--seeds", "0", "-o", out])
    assert code == 0, text
    assert json.loads((out / MARKER).read_text())["command"] == "compare"
    assert json.loads((out / "sft-s0" / MARKER).read_text())["command"] == "train"
    code, text = invoke(["compare", inputs["recipe"], "--methods", "sft", "-o", out])
    assert code == 2 and "--resume" in error_line(text) and "--overwrite" in error_line(text)
    before = (out / "sft-s0" / "summary.json").read_text()
    code, text = invoke(["compare", inputs["recipe"], "--methods", "sft", "-o", out, "--resume"])
    assert code == 0, text
    assert (out / "sft-s0" / "summary.json").read_text() == before  # finished: kept, not retrained
