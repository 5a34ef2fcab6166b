"""Run directories: marker, overwrite/resume rules, the cross-process lock, stale temporaries (tandem.io.rundir)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tandem.io.rundir import (
    LOCK,
    MARKER,
    RunDirError,
    RunLock,
    check_run_dir,
    clean_stale_tmp,
    is_run_dir,
    open_run_dir,
    prepare_run_dir,
    read_marker,
)
from tandem.models.atomic import atomic_dir


def test_new_dir_gets_a_marker_with_version_and_command(tmp_path):
    out = tmp_path / "a" / "run"
    prepare_run_dir(out, resume=False, overwrite=False, command="train r.yaml")
    m = read_marker(out)
    assert is_run_dir(out) and m["command"] == "train r.yaml" and m["tandem"] and m["created"]


def test_existing_empty_dir_may_be_used(tmp_path):
    prepare_run_dir(tmp_path, resume=False, overwrite=False, command="train")
    assert is_run_dir(tmp_path)


@pytest.mark.parametrize("resume, overwrite", [(False, False), (False, True), (True, False)])
def test_foreign_non_empty_dir_is_refused_whatever_the_flags_and_kept(tmp_path, resume, overwrite):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("precious\n")
    with pytest.raises(RunDirError, match=str(data)) as e:
        prepare_run_dir(data, resume=resume, overwrite=overwrite, command="train")
    assert "not created by tandem" in str(e.value)
    with pytest.raises(RunDirError, match="not created by tandem"):
        RunLock(data).acquire()
    assert sorted(p.name for p in data.iterdir()) == ["train.jsonl"]  # nothing written, nothing deleted
    assert (data / "train.jsonl").read_text() == "precious\n"


def test_tandem_dir_needs_resume_or_overwrite(tmp_path):
    prepare_run_dir(tmp_path / "r", resume=False, overwrite=False, command="train")
    (tmp_path / "r" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunDirError, match="pass --resume .* or --overwrite"):
        prepare_run_dir(tmp_path / "r", resume=False, overwrite=False, command="train")


def test_overwrite_replaces_a_tandem_dir_and_keeps_the_lock_file(tmp_path):
    out = tmp_path / "r"
    with RunLock(out):
        prepare_run_dir(out, resume=False, overwrite=False, command="train")
        (out / "sub").mkdir()
        (out / "sub" / "x.bin").write_bytes(b"1")
        (out / "metrics.jsonl").write_text("{}\n")
    with RunLock(out):
        prepare_run_dir(out, resume=False, overwrite=True, command="train again")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, LOCK])
    assert read_marker(out)["command"] == "train again"


def test_resume_keeps_the_dir_and_refuses_a_missing_or_empty_one(tmp_path):
    out = tmp_path / "r"
    prepare_run_dir(out, resume=False, overwrite=False, command="train")
    (out / "metrics.jsonl").write_text("{}\n")
    prepare_run_dir(out, resume=True, overwrite=False, command="train")
    assert (out / "metrics.jsonl").read_text() == "{}\n"
    with pytest.raises(RunDirError, match=r"nope: nothing to resume"):
        prepare_run_dir(tmp_path / "nope", resume=True, overwrite=False, command="train")
    assert not (tmp_path / "nope").exists()


def test_resume_and_overwrite_together_and_a_file_path_are_refused(tmp_path):
    with pytest.raises(RunDirError, match="not both"):
        check_run_dir(tmp_path, resume=True, overwrite=True)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        check_run_dir(f, resume=False, overwrite=True)


def test_lock_is_exclusive_within_one_process(tmp_path):
    with RunLock(tmp_path / "r"):
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path / "r").acquire()
    with RunLock(tmp_path / "r") as again:  # released on exit
        assert again.held


HOLDER = textwrap.dedent(
    """
    import sys, time
    from tandem.io.rundir import open_run_dir
    with open_run_dir(sys.argv[1], resume=False, overwrite=False, command="train"):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_second_process_is_refused_with_the_first_pid_and_lock_dies_with_its_holder(tmp_path):
    out = tmp_path / "r"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"another tandem process \\(pid {child.pid}\\)"):
            RunLock(out).acquire()
        # an --overwrite attempt is refused before it deletes anything
        (out / "live.txt").write_text("x")
        with pytest.raises(RunDirError, match=str(child.pid)):
            with open_run_dir(out, resume=False, overwrite=True, command="train"):
                pass
        assert (out / "live.txt").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with RunLock(out) as lock:  # the kernel released it when the holder died
        assert lock.held and lock.holder() == os.getpid()


def test_clean_stale_tmp_removes_half_written_entries_and_restores_a_moved_aside_copy(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    (ck / ".step-4.tmp-abc123").mkdir()
    (ck / ".step-4.tmp-abc123" / "trainable.safetensors").write_bytes(b"half")
    (ck / "step-2").mkdir()
    (ck / ".step-2.old-999").mkdir()  # kill after atomic_dir's second rename: delete the old copy
    (ck / ".step-3.old-999").mkdir()  # kill between the renames: the old copy is the only one
    (ck / ".step-3.old-999" / "state.json").write_text("{}")
    (tmp_path / "ref-initial-preference-0.tmp").write_bytes(b"x")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    done = clean_stale_tmp(tmp_path)
    assert sorted(p.name for p in ck.iterdir()) == ["step-2", "step-3"]
    assert (ck / "step-3" / "state.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "metrics.jsonl"]
    assert "restored checkpoints/step-3" in done and "removed checkpoints/.step-4.tmp-abc123" in done


def test_clean_stale_tmp_matches_atomic_dir_temp_names(tmp_path):
    target = tmp_path / "checkpoints" / "step-1"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("x")
            os.rename(tmp, tmp.with_name(tmp.name + "x"))  # keep it, as a kill -9 would
            tmp.mkdir()
            raise KeyboardInterrupt
    left = [p.name for p in target.parent.iterdir()]
    assert left and all(n.startswith(".step-1.tmp-") for n in left)
    clean_stale_tmp(tmp_path)
    assert list(target.parent.iterdir()) == []


def test_open_run_dir_checks_locks_prepares_and_cleans_on_resume(tmp_path):
    out = tmp_path / "r"
    with open_run_dir(out, resume=False, overwrite=False, command="train") as d:
        assert d == out and is_run_dir(out)
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
        (out / "x.tmp").write_text("half")
    with open_run_dir(out, resume=True, overwrite=False, command="train") as d:
        assert not (out / "x.tmp").exists()
