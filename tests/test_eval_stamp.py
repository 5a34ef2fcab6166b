"""An evaluation is reused only when it was made with the same eval block AND the same local files that block names:
a reward model retrained in place (same path) is scored again, not read from the old results."""

from __future__ import annotations

import json
import os

from tandem.pipelines.evaluate import local_files, stamped


def test_reused_until_a_named_file_changes(tmp_path):
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "model.safetensors").write_bytes(b"weights v1")
    block = {"metrics": ["reward"], "reward_model": str(rm), "data": {"source": str(tmp_path / "missing.jsonl")}}
    out = tmp_path / "eval"
    out.mkdir()
    calls = []

    def compute():
        calls.append(1)
        (out / "results.json").write_text(json.dumps({"metrics": {"reward": {"mean": len(calls)}}}))
        return json.loads((out / "results.json").read_text())

    assert stamped(out, block, True, compute) == ({"metrics": {"reward": {"mean": 1}}}, False)
    assert stamped(out, block, True, compute)[1] is True and len(calls) == 1  # same block, same files: reused
    st = (rm / "model.safetensors").stat()
    (rm / "model.safetensors").write_bytes(b"weights v2")  # retrained in place: same path
    os.utime(rm / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    res, reused = stamped(out, block, True, compute)
    assert not reused and res["metrics"]["reward"]["mean"] == 2
    assert stamped(out, block, False, compute)[1] is False and len(calls) == 3  # reuse off: always computed


def test_local_files_lists_files_and_directories_and_skips_other_strings(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"123")
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "f.txt").write_text("hello")
    found = local_files({"x": str(tmp_path / "d"), "y": [str(tmp_path / "f.txt"), "rouge"], "z": {"w": "org/model"}})
    assert set(found) == {str(tmp_path / "d"), str(tmp_path / "f.txt")}
    assert [row[:2] for row in found[str(tmp_path / "d")]] == [["a.bin", 3]]  # files directly in it
    assert found[str(tmp_path / "f.txt")][0][:2] == ["f.txt", 5]
