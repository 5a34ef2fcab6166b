"""tandem.io.figures.save_figure (atomic, tight, closed), tandem.io.callables and tandem.data.messages."""

from __future__ import annotations

import pytest

from tandem.data.messages import prompt_text
from tandem.io.callables import resolve_function
from tandem.io.figures import plt, save_figure


def test_save_figure_writes_atomically_and_closes(tmp_path):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "sub" / "a.png", dpi=50)
    assert out == tmp_path / "sub" / "a.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["a.png"]  # no temporary file left
    assert not plt.fignum_exists(fig.number)
    from matplotlib.image import imread

    h, w = imread(out).shape[:2]
    assert h <= 150 and w <= 200  # tight bounding box: never larger than 4x3 inches at 50 dpi


def test_failed_save_keeps_the_old_file_and_closes(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    fig, _ = plt.subplots()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.png"]
    assert not plt.fignum_exists(fig.number)


def test_resolve_function():
    assert resolve_function("os.path:join")("a", "b") == "a/b"
    assert resolve_function(len) is len
    with pytest.raises(ValueError, match="eval.reward_fn: expected 'module:function', got 'nocolon'"):
        resolve_function("nocolon", what="eval.reward_fn")
    with pytest.raises(ValueError, match="ppo reward_fn 'os.path:nope'"):
        resolve_function("os.path:nope")
    with pytest.raises(ValueError, match="is not callable"):
        resolve_function("os:sep")


def test_prompt_text_is_the_last_user_turn():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "u2"}]
    assert prompt_text(msgs) == "u2"
    assert prompt_text([{"role": "system", "content": "only"}]) == "only"
