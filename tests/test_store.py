import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latenttracer.store import COLUMNS, ResultStore

REPO = Path(__file__).resolve().parents[1]


def row(i, model="m", config_hash="c", status="ok", **extra):
    r = {
        "path": f"images/{i}.png",
        "sha256": f"{i:064x}",
        "model": model,
        "config_hash": config_hash,
        "score": None if status == "failed" else 1e-4 * (i + 1),
        "init_loss": 1e-2 * (i + 1),
        "best_step": None if status == "failed" else 10 * i,
        "status": status,
        "reason": "CUDA out of memory" if status == "failed" else "",
        "seconds": 0.5,
    }
    r.update(extra)
    return r


def chunks(root):
    return sorted(Path(root).glob("part-*.parquet"))


def test_empty_store(tmp_path):
    store = ResultStore(tmp_path / "new" / "store")
    assert (tmp_path / "new" / "store").is_dir()
    table = store.load()
    assert table.empty and tuple(table.columns) == COLUMNS
    assert store.done("m", "c") == set()
    assert store.append([]) is None and chunks(store.root) == []


def test_round_trip_with_dtypes(tmp_path):
    store = ResultStore(tmp_path)
    path = store.append([row(0), row(1, status="failed"), row(2, path=Path("images/two.png"))])
    assert path.parent == tmp_path and path.name.startswith("part-") and path.suffix == ".parquet"
    table = ResultStore(tmp_path).load()  # a fresh instance: nothing cached
    assert tuple(table.columns) == COLUMNS
    assert table["score"].dtype == np.float64 and table["init_loss"].dtype == np.float64
    assert table["seconds"].dtype == np.float64
    assert table["best_step"].dtype == pd.Int64Dtype()
    for col in ("path", "sha256", "model", "config_hash", "status", "reason"):
        assert pd.api.types.is_string_dtype(table[col]), col
    assert list(table["path"]) == ["images/0.png", "images/1.png", "images/two.png"]
    assert table.loc[0, "score"] == pytest.approx(1e-4) and table.loc[2, "best_step"] == 20
    failed = table.loc[1]
    assert np.isnan(failed["score"]) and pd.isna(failed["best_step"])
    assert failed["status"] == "failed" and failed["reason"] == "CUDA out of memory"


def test_append_validates(tmp_path):
    store = ResultStore(tmp_path)
    bad = row(0)
    del bad["config_hash"]
    with pytest.raises(KeyError, match="config_hash"):
        store.append([row(1), bad])
    with pytest.raises(ValueError, match="status"):
        store.append([row(0, status="maybe")])
    with pytest.raises(ValueError, match="score"):
        store.append([row(0, score="low")])
    assert chunks(tmp_path) == []


def test_unwritable_chunk_raises_and_leaves_nothing(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(RuntimeError, match="could not write result chunk"):
        store.append([row(0, mixed=1), row(1, mixed="one")])
    assert list(tmp_path.iterdir()) == []


def test_dedupe_keeps_last_written(tmp_path):
    store = ResultStore(tmp_path)
    store.append([row(0, status="failed"), row(1, status="failed"), row(2)])
    store.append([row(0), row(3, model="other")])
    store.append([row(2, score=0.5), row(2, score=0.25)])  # within a chunk, too, the later row wins
    table = store.load()
    assert len(table) == 4
    by_sha = table.set_index("sha256")
    assert by_sha.loc[f"{0:064x}", "status"] == "ok"
    assert by_sha.loc[f"{2:064x}", "score"] == 0.25
    assert store.done("m", "c") == {f"{0:064x}", f"{2:064x}"}
    assert store.done("m", "c", include_failed=True) == {f"{i:064x}" for i in (0, 1, 2)}
    assert store.done("other", "c") == {f"{3:064x}"}
    assert store.done("m", "other-config") == set()


def test_load_filters(tmp_path):
    store = ResultStore(tmp_path)
    store.append([row(0), row(0, model="b"), row(0, config_hash="d"), row(1, model="b", config_hash="d")])
    assert len(store.load()) == 4
    assert set(store.load(model="b")["config_hash"]) == {"c", "d"}
    assert len(store.load(config_hash="d")) == 2
    assert len(store.load("b", "d")) == 1


def test_lookup(tmp_path):
    store = ResultStore(tmp_path)
    store.append([row(i) for i in range(5)] + [row(7, model="x")])
    hashes = [f"{i:064x}" for i in (3, 1, 7, 1)]
    found = store.lookup("m", "c", hashes)
    assert found.index.name == "sha256"
    assert list(found.index) == [f"{3:064x}", f"{1:064x}"]  # order asked, missing and duplicates dropped
    assert list(found["path"]) == ["images/3.png", "images/1.png"]
    assert store.lookup("m", "c", []).empty


def test_load_sees_new_chunks_and_other_writers(tmp_path):
    a, b = ResultStore(tmp_path), ResultStore(tmp_path)
    a.append([row(0)])
    assert len(a.load()) == 1
    b.append([row(1)])
    assert len(a.load()) == 2
    names = {p.name for p in chunks(tmp_path)}
    assert len(names) == 2


def test_temp_files_ignored(tmp_path):
    store = ResultStore(tmp_path)
    store.append([row(0)])
    (tmp_path / ".part-00000000000000000001-1-00000000-abc.parquet.1234.tmp").write_bytes(b"PAR1 half")
    (tmp_path / "part-00000000000000000002-1-abc.parquet.tmp").write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = store.load()
    assert list(table["sha256"]) == [f"{0:064x}"]


def test_corrupt_chunk_warned_skipped_and_kept(tmp_path):
    store = ResultStore(tmp_path)
    good = store.append([row(i) for i in range(3)])
    other = store.append([row(i) for i in range(3, 6)])
    data = other.read_bytes()
    other.write_bytes(data[: len(data) // 2])  # truncated, as by a crash or a careless edit
    garbage = tmp_path / "part-99999999999999999999-hand-edited.parquet"
    garbage.write_text("path,sha256\n")
    with pytest.warns(RuntimeWarning) as record:
        table = ResultStore(tmp_path).load()
    messages = " ".join(str(w.message) for w in record)
    assert other.name in messages and garbage.name in messages
    assert set(table["sha256"]) == {f"{i:064x}" for i in range(3)}
    assert good.exists() and other.exists() and garbage.exists()


def test_extra_columns_kept(tmp_path):
    store = ResultStore(tmp_path)
    store.append([row(0, trajectory=[0.3, 0.2, 0.1], source="sd", split="eval", width=512)])
    store.append([row(1)])  # a chunk without the extra columns
    table = ResultStore(tmp_path).load()
    assert tuple(table.columns[: len(COLUMNS)]) == COLUMNS
    assert {"trajectory", "source", "split", "width"} <= set(table.columns)
    first = table.set_index("sha256").loc[f"{0:064x}"]
    np.testing.assert_allclose(np.asarray(first["trajectory"], dtype=float), [0.3, 0.2, 0.1])
    assert first["source"] == "sd" and first["split"] == "eval" and first["width"] == 512
    second = table.set_index("sha256").loc[f"{1:064x}"]
    assert second["trajectory"] is None or np.all(pd.isna(second["trajectory"]))
    assert pd.isna(second["width"])


def test_compact_preserves_content(tmp_path):
    store = ResultStore(tmp_path)
    store.append([row(i, trajectory=[float(i), 1.0]) for i in range(4)])
    store.append([row(1, status="failed", trajectory=[]), row(9, model="n", trajectory=[2.0])])
    store.append([row(1, score=0.125, trajectory=[0.5])])
    corrupt = tmp_path / "part-00000000000000000000-corrupt.parquet"
    corrupt.write_bytes(b"not parquet")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        before = store.load()
    with pytest.warns(RuntimeWarning, match="corrupt"):
        store.compact()
    assert len(chunks(tmp_path)) == 2 and corrupt.exists()  # the merged chunk, and the corrupt one untouched
    with pytest.warns(RuntimeWarning, match="corrupt"):
        after = ResultStore(tmp_path).load()

    def comparable(df):
        df = df.sort_values("sha256", kind="stable").reset_index(drop=True)
        return df.assign(trajectory=df["trajectory"].map(lambda t: list(np.asarray(t, dtype=float))))

    pd.testing.assert_frame_equal(comparable(before), comparable(after))
    assert before.set_index("sha256").loc[f"{1:064x}", "score"] == 0.125
    corrupt.unlink()
    store.append([row(1, score=0.0625)])  # rows appended after compaction still win
    assert store.load().set_index("sha256").loc[f"{1:064x}", "score"] == 0.0625
    store.compact()
    assert len(chunks(tmp_path)) == 1 and len(store.load()) == 5


WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from latenttracer.store import ResultStore

    root, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = ResultStore(root)
    finished = store.done("m", "c")
    todo = [f"{i:064x}" for i in range(n) if f"{i:064x}" not in finished]
    rng = np.random.default_rng()
    for start in range(0, len(todo), chunk):
        batch = todo[start:start + chunk]
        store.append([  # incompressible trajectories make each chunk ~1 MB, so writing takes a while
            dict(path=f"images/{h[-8:]}.png", sha256=h, model="m", config_hash="c", score=1e-4,
                 init_loss=1e-2, best_step=7, status="ok", reason="", seconds=0.01,
                 trajectory=rng.random(2500))
            for h in batch
        ])
        print(len(batch), flush=True)
    print("END", flush=True)
    """
)


def temp_files(root):
    return {p for p in Path(root).iterdir() if p.name.endswith(".tmp")}


def started_files(root, before):
    """Files that were not in ``before`` and already hold some bytes: a chunk being written."""
    return [p for p in Path(root).iterdir() if p not in before and p.exists() and p.stat().st_size > 0]


def run_worker(root, n, chunk, kill=False):
    """Run the resuming worker to the end, or SIGKILL it once its third chunk has started to hit the disk.

    Returns the number of rows it reported as appended, its exit code, and whether the kill caught a chunk
    mid-write (a partly written temporary file was left behind).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(n), str(chunk)],
                            stdout=subprocess.PIPE, text=True, env=env)
    before = set(Path(root).iterdir())
    reported = 0
    try:
        for line in proc.stdout:
            if line.strip() == "END":
                break
            reported += int(line)
            if kill and reported >= 2 * chunk:
                before = set(Path(root).iterdir())
                deadline = time.monotonic() + 30
                while not started_files(root, before) and time.monotonic() < deadline:
                    time.sleep(0.0002)
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    left = [p for p in temp_files(root) - before if p.stat().st_size > 0]
    return reported, proc.returncode, bool(left)


def test_kill_minus_nine_loses_nothing_and_recomputes_nothing(tmp_path):
    n, chunk = 500, 50
    completed, caught_mid_write = 0, 0
    for _ in range(2):
        reported, rc, mid_write = run_worker(tmp_path, n, chunk, kill=True)
        assert rc == -signal.SIGKILL
        caught_mid_write += mid_write
        completed += reported
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no half-written chunk is visible, leftover temp files are ignored
            done = ResultStore(tmp_path).done("m", "c")
        # Every reported chunk is there; at most one more finished between its report and the kill.
        assert completed <= len(done) <= completed + chunk
        completed = len(done)
        for path in chunks(tmp_path):
            assert len(pd.read_parquet(path)) == chunk
    assert caught_mid_write >= 1, "the kills never landed while a chunk was being written"
    reported, rc, _ = run_worker(tmp_path, n, chunk)
    assert rc == 0 and completed + reported == n
    raw = pd.concat([pd.read_parquet(p) for p in chunks(tmp_path)], ignore_index=True)
    assert len(raw) == n and raw["sha256"].is_unique  # nothing was computed twice
    assert ResultStore(tmp_path).done("m", "c") == {f"{i:064x}" for i in range(n)}
