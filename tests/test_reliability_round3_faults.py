"""Issue 28, faults and mechanisms: a real disk-full ``SafetensorError`` and a read-only output (on a tiny tmpfs when
this machine lets the test mount one), secrets redacted from every file tandem writes, ``~`` in output paths, a user's
``.tandem-lock``, the marker's command, the inputs ``--overwrite`` keeps, hostile YAML bounds, an interrupted merge,
``--extrapolate``, and the common ``TandemError`` base caught by the CLI's one-line handler."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors import SafetensorError

from test_reliability import error_line, invoke, recipe_file

from tandem.cli.common import user_errors, user_message
from tandem.config.recipe import dump_recipe, parse_recipe
from tandem.config.yamlsrc import YamlLimitError, expanded_size, load_yaml
from tandem.engine import checkpoint as ckpt
from tandem.errors import TandemError
from tandem.io.rundir import LOCK, RunDirError, RunLock, check_run_dir, path_inputs, write_marker
from tandem.io.secrets import looks_like_key, redact, redact_value
from tandem.models.card import card_info

# the message safetensors 0.8 gives for ENOSPC (seen on a full tmpfs); SafetensorError is not an OSError
REAL_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture(autouse=True)
def no_debug(monkeypatch, one_thread):
    monkeypatch.delenv("TANDEM_DEBUG", raising=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str):
    """A small tmpfs at ``path`` (skips the test where this machine does not allow mounting one)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}", *options))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the faked-error tests cover the message")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --------------------------------------------------------------------------------------------- disk full, read-only


def test_a_real_safetensor_disk_full_error_is_one_line(tmp_path, tiny_model_dir, synthetic_files, monkeypatch):
    def full(tensors, filename, *a, **k):
        raise SafetensorError(REAL_ENOSPC)

    monkeypatch.setattr(ckpt, "save_file", full)
    code, out = invoke(["train", recipe_file(tmp_path, tiny_model_dir, synthetic_files)])
    line = error_line(out)
    assert code == 2 and line.startswith("error: disk full:") and "--resume" in line
    assert not isinstance(SafetensorError(REAL_ENOSPC), OSError)
    assert user_message(SafetensorError(REAL_ENOSPC), "runs/x").startswith("disk full: runs/x")
    assert user_message(SafetensorError("Error while deserializing header: invalid JSON")) is None  # not a disk error


def test_a_full_tmpfs_gives_disk_full_not_a_traceback(tmp_path, tiny_model_dir):
    with tmpfs(tmp_path / "small", "64k") as mnt:
        code, out = invoke(["merge", tiny_model_dir, tiny_model_dir, "--alpha", "0.5", "--groups", "block2",
                            "-o", mnt / "merged"])
        line = error_line(out)
        assert code == 2 and line.startswith("error: disk full:")
        assert not (mnt / "merged").exists()  # the failed merge leaves nothing


def test_a_read_only_output_is_one_line(tmp_path, tiny_model_dir, synthetic_files):
    recipe = recipe_file(tmp_path, tiny_model_dir, synthetic_files)
    with tmpfs(tmp_path / "ro", "64k", "ro") as mnt:
        code, out = invoke(["train", recipe, "-o", mnt / "run"])
        line = error_line(out)
        assert code == 2 and str(mnt / "run") in line and "read-only" in line


# ------------------------------------------------------------------------------------------------------ secrets


def test_looks_like_key_tells_keys_from_variable_names():
    for name in ("OPENAI_API_KEY", "MY_JUDGE_KEY", "api_key", "HF_TOKEN"):
        assert not looks_like_key(name), name
    for key in ("sk-proj-AbCdEfGh12345678", "hf_abcdefghijklmnopqrstuv", "Xy7Qw2Lp9Rt4Zk8Mn3Bv6Cd1",
                "ghp_0123456789abcdefghijABCDEFGHIJ", "abc-def.ghi jkl mno pqr"):
        assert looks_like_key(key), key
    assert redact("https://bob:pw123@host/v1 and sk-abcdefghijklmnop") == "https://***@host/v1 and ***"


def test_secrets_are_redacted_in_every_file_written(tmp_path, tiny_model_dir, synthetic_files):
    raw = yaml.safe_load(recipe_file(tmp_path, tiny_model_dir, synthetic_files).read_text())
    raw["eval"] = {"judge": {"base_url": "https://api.example.com/v1", "model": "gpt"}}
    recipe = parse_recipe(raw)
    # past validation (e.g. a recipe object built by code): the key and the password still never reach a file
    judge = recipe.eval.judge.model_construct(base_url="https://bob:hunter2hunter2@api.example.com/v1", model="gpt",
                                              api_key_env="sk-proj-AbCdEfGh12345678", task="dialogue", max_workers=1)
    leaky = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"judge": judge})})
    text = dump_recipe(leaky)
    assert "hunter2hunter2" not in text and "AbCdEfGh12345678" not in text and "api.example.com/v1" in text
    card = card_info(leaky.model_dump(mode="json"), {})
    assert "hunter2hunter2" not in json.dumps(card.recipe) and "AbCdEfGh12345678" not in json.dumps(card.recipe)
    assert redact_value("eval.judge.api_key_env", "OPENAI_API_KEY") == "OPENAI_API_KEY"


def test_a_recipe_with_a_key_is_never_written(tmp_path, tiny_model_dir, synthetic_files):
    recipe = recipe_file(tmp_path, tiny_model_dir, synthetic_files)
    code, out = invoke(["train", recipe, "--set", "eval.judge={base_url: 'https://u:sekrit-pass-123@h.example', "
                        "model: m}"])
    assert code == 2 and "sekrit-pass-123" not in out and "eval.judge.base_url" in error_line(out)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ run directories


def test_tilde_and_home_in_output_dir_are_expanded(tmp_path, tiny_model_dir, synthetic_files, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    raw = yaml.safe_load(recipe_file(tmp_path, tiny_model_dir, synthetic_files).read_text())
    for given in ("~/runs/a", "$HOME/runs/a"):
        assert parse_recipe({**raw, "output_dir": given}).output_dir == str(tmp_path / "home" / "runs" / "a")


def test_a_users_lock_file_makes_a_directory_foreign_and_is_kept(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / LOCK).write_text("notes\n")
    with pytest.raises(RunDirError, match="not created by tandem"):
        check_run_dir(d, resume=False, overwrite=True)
    with pytest.raises(RunDirError, match="not created by tandem"):
        RunLock(d).acquire()
    assert (d / LOCK).read_text() == "notes\n"
    empty = tmp_path / "left-by-a-kill"  # tandem's own lock without a marker (killed before the marker): reusable
    empty.mkdir()
    (empty / LOCK).write_text('{"pid": 123}')
    check_run_dir(empty, resume=False, overwrite=False)


def test_resume_checks_the_markers_command_and_overwrite_the_inputs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, "train")
    (run / "final").mkdir()
    (run / "data.jsonl").write_text("{}\n")
    check_run_dir(run, resume=True, overwrite=False, command="train")
    with pytest.raises(RunDirError, match="`tandem train`, not of `tandem compare`"):
        check_run_dir(run, resume=True, overwrite=False, command="compare")
    inputs = path_inputs({"output_dir": str(run), "model": {"name_or_path": str(run / "final")},
                          "data": {"sft": [{"source": str(run / "data.jsonl")}]}, "name": "x",
                          "tax": {"out": str(run / "tax")}})
    assert inputs == {"model.name_or_path": str(run / "final"), "data.sft.0.source": str(run / "data.jsonl")}
    with pytest.raises(RunDirError, match="model.name_or_path"):
        check_run_dir(run, resume=False, overwrite=True, inputs=inputs)
    (tmp_path / "link").symlink_to(run / "final")  # a link into the directory is caught too
    with pytest.raises(RunDirError, match="link"):
        check_run_dir(run, resume=False, overwrite=True, inputs={"model": str(tmp_path / "link")})
    check_run_dir(run, resume=False, overwrite=True, inputs={"model": str(tmp_path)})  # outside: fine


# --------------------------------------------------------------------------------------------------- hostile YAML


@pytest.mark.parametrize("text, match", [
    ("a: " + "[" * 20000 + "]" * 20000, "nested more than"),
    ("a: " + "{b: " * 5000 + "1" + "}" * 5000, "nested more than"),
    ("a: " + "9" * 5000, "5000 digits"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcde", "bcdef")), "alias"),
])
def test_hostile_yaml_is_refused_quickly(text, match):
    with pytest.raises(YamlLimitError, match=match):
        load_yaml(text)


def test_aliases_within_the_bound_still_work():
    assert load_yaml("a: &x {b: [1, 2]}\nc: *x\n") == {"a": {"b": [1, 2]}, "c": {"b": [1, 2]}}
    # map 1 + key a 1 + [1, 2, 3] 4 + key b 1 + [*x, *x] 1 + 4 + 4 = 16 nodes once expanded
    assert expanded_size(yaml.compose("a: &x [1, 2, 3]\nb: [*x, *x]\n")) == 16
    assert load_yaml("n: 123456789012345678901234567890") == {"n": 123456789012345678901234567890}


def test_truncation_warns_past_half_and_fails_past_the_threshold(caplog):
    import logging

    from tandem.data.errors import DataError
    from tandem.pipelines.train_data import check_content

    feats = [{}] * 10
    with caplog.at_level(logging.WARNING, logger="tandem"):
        check_content("d.jsonl", "sft", feats, {"truncated": 4}, 1.0, 64)
        assert not caplog.records
        check_content("d.jsonl", "sft", feats, {"truncated": 10}, 1.0, 64)  # 100%: a warning, by default no error
    assert "10 of 10 rows (100%)" in caplog.text and "data.max_truncated" in caplog.text
    with pytest.raises(DataError, match="6 of 10 rows .* more than data.max_truncated 0.5"):
        check_content("d.jsonl", "sft", feats, {"truncated": 6}, 0.5, 64)


# ----------------------------------------------------------------------------------------------------------- merge


def test_an_interrupted_merge_is_refused_and_a_finished_one_loads(tmp_path, tiny_model_dir):
    out = tmp_path / "merged"
    code, text = invoke(["merge", tiny_model_dir, tiny_model_dir, "--alpha", "1.25", "--extrapolate", "--groups",
                         "block2", "-o", out])
    assert code == 0, text
    assert json.loads((out / "tandem_merge.json").read_text())["alphas"] == [1.25, 1.25]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # the staging directory is gone
    (out / "tandem_merge.json").unlink()  # as if killed before the merge finished
    from tandem.models import load_any
    from tandem.models.checks import ModelInputError

    with pytest.raises(ModelInputError, match="interrupted `tandem merge`"):
        load_any(out)


# ---------------------------------------------------------------------------------------------- the error base


def test_a_tandem_error_is_one_line_and_exit_2():
    class Custom(TandemError):
        pass

    assert user_message(Custom("something named, and what to do")) == "something named, and what to do"
    assert issubclass(RunDirError, TandemError)
    import typer

    with pytest.raises(typer.Exit) as e:
        with user_errors():
            raise Custom("x")
    assert e.value.exit_code == 2
