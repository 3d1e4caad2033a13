"""latenttracer.atomic: the one writer of files and directories."""

from __future__ import annotations

import pandas as pd
import pytest

from latenttracer import atomic


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_write_text_bytes_and_frames(tmp_path):
    assert atomic.write_text(tmp_path / "sub" / "a.md", "x\r\ny\n").read_bytes() == b"x\r\ny\n"  # no translation
    assert atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    pd.testing.assert_frame_equal(pd.read_csv(atomic.write_frame(frame, tmp_path / "t.csv")), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(atomic.write_frame(frame, tmp_path / "t.parquet")), frame)
    with pytest.raises(ValueError, match="t.xlsx.*csv or .parquet"):
        atomic.write_frame(frame, tmp_path / "t.xlsx")
    assert _names(tmp_path) == ["b.bin", "sub", "t.csv", "t.parquet"]  # no temporary file left
    assert _names(tmp_path / "sub") == ["a.md"]


def test_failure_mid_write_keeps_the_old_file(tmp_path):
    target = atomic.write_text(tmp_path / "f.txt", "old")

    def half(tmp):
        tmp.write_text("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write(target, half)
    assert target.read_text() == "old" and _names(tmp_path) == ["f.txt"]
    with pytest.raises(KeyboardInterrupt):
        atomic.write(target, lambda tmp: (tmp.write_text("x"), (_ for _ in ()).throw(KeyboardInterrupt())))
    assert target.read_text() == "old" and _names(tmp_path) == ["f.txt"]


def test_remove_stale(tmp_path):
    (tmp_path / ".a.png.x1.tmp").write_bytes(b"half")
    (tmp_path / ".d.new-1.tmp").mkdir()
    (tmp_path / "keep.png").write_bytes(b"")
    assert len(atomic.remove_stale(tmp_path)) == 2 and _names(tmp_path) == ["keep.png"]


def test_replace_dir_swaps_whole_trees(tmp_path):
    def tree(text):
        def write(d):
            (d / "sub").mkdir()
            (d / "sub" / "w.txt").write_text(text)
        return write

    target = atomic.replace_dir(tmp_path / "member", tree("one"))
    assert (target / "sub" / "w.txt").read_text() == "one"
    atomic.replace_dir(target, tree("two"))
    assert (target / "sub" / "w.txt").read_text() == "two" and _names(tmp_path) == ["member"]

    def failing(d):
        (d / "partial").write_text("x")
        raise RuntimeError("killed while saving")

    with pytest.raises(RuntimeError, match="killed"):
        atomic.replace_dir(target, failing)
    assert (target / "sub" / "w.txt").read_text() == "two" and _names(tmp_path) == ["member"]


def test_restore_dir_after_a_crash_between_the_renames(tmp_path):
    target = atomic.replace_dir(tmp_path / "m", lambda d: (d / "f").write_text("old"))
    target.rename(tmp_path / ".m.old-abc.tmp")  # what a crash between the two renames leaves
    assert atomic.restore_dir(target) == tmp_path / ".m.old-abc.tmp"
    assert (target / "f").read_text() == "old" and atomic.restore_dir(target) is None
