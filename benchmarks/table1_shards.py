"""Table 1's sharded inversion jobs, one inspected model: how long each shard takes and where the time goes.

Runs the very command ``make reproduce-table1`` runs for one model (``experiments.invert -m`` with the joblib
launcher, ``threads=1``, ``images=table1 shards=S shard=0,..,S-1``) into a scratch store, then prints one row per
shard: its images, the job's wall time (``provenance.json``), the inversion's own compute time (the sum of the
per-image ``seconds`` the engine records) and the rest (waiting for a lock, loading, start-up), plus each job's
ratio to the fastest. With ``--reference`` the scores are compared with a published score file (bit for bit).

    .venv/bin/python benchmarks/table1_shards.py --model kl-a --workdir /tmp/shards       # 3 shards, 2 jobs
    .venv/bin/python benchmarks/table1_shards.py --model kl-a --jobs 1 --workdir /tmp/seq  # one after the other
    .venv/bin/python benchmarks/table1_shards.py --report /tmp/shards                     # print again, no run

The image sets are taken from (or made in) ``--cache-dir`` (default: ``<workdir>/cache``); scores go to
``<workdir>/scores`` (delete it to time a run again: a rerun finds everything cached). Timings on a shared
machine are noisy: compare the shards of one run with each other, not runs on different days.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_jobs(args: argparse.Namespace, work: Path) -> float:
    """The multirun, as the Makefile starts it (one model); returns its wall time in seconds."""
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    command = [sys.executable, "-m", "experiments.invert", "-m", "hydra/launcher=joblib",
               f"hydra.launcher.n_jobs={args.jobs}", "threads=1", f"model={args.model}", "images=table1",
               f"shards={args.shards}", f"shard={','.join(map(str, range(args.shards)))}",
               f"store={work / 'scores'}", f"paths.cache_dir={cache}", f"paths.results_dir={work / 'results'}",
               f"hydra.sweep.dir={work / 'multirun'}", "logger=none", "progress=false", *args.overrides]
    print("$", " ".join(command), flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return time.perf_counter() - t0


def shard_table(work: Path) -> pd.DataFrame:
    """One row per job of the latest multirun in ``work``: shard, images, computed, wall, compute, rest."""
    stages = json.loads((work / "results" / "provenance.json").read_text())["stages"]
    rows = []
    for job in sorted((work / "multirun").glob("*/scores.csv"), key=lambda p: int(p.parent.name)):
        listed = yaml.safe_load((job.parent / ".hydra" / "overrides.yaml").read_text())
        overrides = dict(o.split("=", 1) for o in listed)
        shard = int(overrides["shard"])
        stage = [s for name, s in stages.items() if name.startswith("invert [") and f"shard={shard}," in name
                 and f"model={overrides['model']}," in name]
        if len(stage) != 1:
            raise SystemExit(f"{work / 'results' / 'provenance.json'}: expected one invert stage of shard {shard}, "
                             f"found {len(stage)}")
        scores = pd.read_csv(job)
        fresh = scores[~scores["cached"].astype(bool)]
        wall = float(stage[0]["seconds"])
        compute = float(fresh["seconds"].sum())
        rows.append({"model": overrides["model"], "shard": shard, "images": len(scores), "computed": len(fresh),
                     "wall_s": wall, "compute_s": compute, "rest_s": wall - compute,
                     "compute_s_per_image": compute / len(fresh) if len(fresh) else float("nan")})
    if not rows:
        raise SystemExit(f"{work / 'multirun'}: no job results (*/scores.csv)")
    table = pd.DataFrame(rows).sort_values("shard").reset_index(drop=True)
    table["wall_vs_fastest"] = table["wall_s"] / table["wall_s"].min()
    return table


def compare(work: Path, reference: Path) -> str:
    """How many of the run's scores equal the published ones bit for bit (matched on inspected model + sha256)."""
    ref = pd.read_parquet(reference, columns=["inspected", "sha256", "score"])
    ours = pd.concat([pd.read_csv(p, dtype={"sha256": str}) for p in (work / "multirun").glob("*/scores.csv")])
    ours = ours[["inspected", "sha256", "score", "path"]]
    # scores.csv holds floats as text: read them back through the store, which keeps the float64 bits
    from latenttracer.store import ResultStore

    store = ResultStore(work / "scores").load()
    exact = store.drop_duplicates(["sha256", "model"], keep="last").rename(columns={"model": "inspected"})
    merged = ours.merge(exact[["inspected", "sha256", "score"]], on=["inspected", "sha256"], suffixes=("_csv", ""))
    merged = merged.merge(ref, on=["inspected", "sha256"], suffixes=("", "_ref"))
    same = int((merged["score"].to_numpy() == merged["score_ref"].to_numpy()).sum())
    return f"{same} of {len(merged)} scores bit-identical to {reference} ({len(ours) - len(merged)} not in it)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="kl-a")
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2, help="parallel jobs (the Makefile's JOBS)")
    p.add_argument("--workdir", type=Path, help="scratch folder: store, results, Hydra outputs (and image sets)")
    p.add_argument("--cache-dir", help="where the image sets are (or are made); default <workdir>/cache")
    p.add_argument("--reference", type=Path, default=REPO / "results" / "table1_scores.parquet",
                   help="published scores to compare with ('' to skip)")
    p.add_argument("--report", type=Path, metavar="WORKDIR", help="only print the table of an earlier run")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides for every job")
    args = p.parse_args()
    work = args.report or args.workdir
    if work is None:
        p.error("give --workdir (to run) or --report (to print an earlier run)")
    work = work.resolve()
    if args.report is None:
        if (work / "multirun").exists():
            raise SystemExit(f"{work / 'multirun'} exists: use a fresh --workdir (or --report {work})")
        wall = run_jobs(args, work)
        print(f"multirun wall time {wall:.1f} s ({args.shards} shards of {args.model}, {args.jobs} jobs)")
    table = shard_table(work)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"slowest / fastest shard wall time: {table['wall_s'].max() / table['wall_s'].min():.2f}; "
          f"compute per image, slowest / fastest shard: "
          f"{table['compute_s_per_image'].max() / table['compute_s_per_image'].min():.2f}")
    if args.reference and str(args.reference) and Path(args.reference).is_file():
        print(compare(work, Path(args.reference)))


if __name__ == "__main__":
    main()
