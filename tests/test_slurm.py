"""``hydra/launcher=slurm`` end to end on a real one-node SLURM cluster started on this machine.

``scripts/slurm_local_cluster.sh start`` writes a private ``slurm.conf`` and starts munged, slurmctld and slurmd;
the session fixture runs it once and stops the daemons afterwards when it was the one that started them (a cluster
already up, e.g. started by ``.ci/run``, is left up). Tests download nothing: the fixture never lets the script
install Debian's ``slurm-wlm`` and ``munge`` (``.ci/run``, or the script run by hand, installs them). The test skips,
saying why, where the cluster cannot start (packages missing, a daemon that does not start). A micro multirun (the
committed zoo's kl-a and vq, 4 real crops, 3 steps) then goes through sbatch; everything lands under ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from latenttracer.store import ResultStore

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local_cluster.sh"
PARTITION = os.environ.get("LATENTTRACER_SLURM_PARTITION", "local")  # the script's partition
HOST = socket.gethostname().split(".")[0]  # the node's name (`hostname -s`)
MODELS = ("kl-a", "vq")


def _script(command: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, "LATENTTRACER_SLURM_INSTALL": "0"})


@pytest.fixture(scope="session")
def slurm_conf() -> Iterator[Path]:
    """The running local cluster's ``slurm.conf`` (started here once per session when it is not up)."""
    if shutil.which("bash") is None or shutil.which("flock") is None:
        pytest.skip("slurm test: needs bash and flock to run scripts/slurm_local_cluster.sh")
    already_up = _script("status", 60).returncode == 0
    started = _script("start", 180)
    why = (started.stderr.strip() or started.stdout.strip()).splitlines()[-1:] or ["no output"]
    if started.returncode == 2:
        pytest.skip(f"slurm test: {why[0]} (`scripts/slurm_local_cluster.sh start` installs them as root)")
    if started.returncode != 0:
        pytest.skip(f"slurm test: the local SLURM cluster did not start (exit {started.returncode}): {why[0]}")
    match = re.search(r"^export SLURM_CONF=(.+)$", started.stdout, re.MULTILINE)
    assert match, f"scripts/slurm_local_cluster.sh start printed no SLURM_CONF line:\n{started.stdout}"
    yield Path(match.group(1))
    if not already_up:
        _script("stop", 120)


def _finished_job_record(job_id: str, conf: Path, wait_s: int = 60) -> str:
    """slurmctld's record of a job once it has ended (kept MinJobAge=300 s; no accounting database needed).

    submitit returns as soon as a job has written its result, a moment before SLURM sees the job end.
    """
    deadline = time.monotonic() + wait_s
    while True:
        done = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                              timeout=30, env={**os.environ, "SLURM_CONF": str(conf)}, check=False)
        record = done.stdout + done.stderr
        if not re.search(r"JobState=(PENDING|RUNNING|COMPLETING|CONFIGURING)\b", record) or time.monotonic() > deadline:
            return record
        time.sleep(1)


def test_invert_multirun_through_slurm(slurm_conf, tmp_path):
    env = {**os.environ, "SLURM_CONF": str(slurm_conf), "LATENTTRACER_ROOT": str(tmp_path),
           "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "experiments.invert", "-m", "hydra/launcher=slurm",
           f"hydra.launcher.partition={PARTITION}", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep}",
           "debug=default", f"model={','.join(MODELS)}", "images=real", "suite.real.n=4", "suite.real.crops.n=12",
           "inversion.steps=3", "progress=false", "threads=1", f"paths.zoo_dir={REPO / 'zoo'}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Both jobs were SLURM jobs: one submitit folder per array task, named by its SLURM id; inside the job,
    # submitit read that id from SLURM's environment; slurmctld ran it in our partition to a clean exit.
    submitit = sweep / ".submitit"
    (script,) = submitit.glob("*/*_submission.sh")
    assert f"#SBATCH --partition={PARTITION}" in script.read_text()
    tasks = sorted(p.name for p in submitit.iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(tasks) == len(MODELS), sorted(p.name for p in submitit.iterdir())
    for task in tasks:
        log = (submitit / task / f"{task}_0_log.out").read_text()
        assert f"JobEnvironment(job_id={task}," in log
        record = _finished_job_record(task, slurm_conf)
        for field in ("JobState=COMPLETED", "ExitCode=0:0", f"Partition={PARTITION}", f"NodeList={HOST}"):
            assert field in record, record

    # Both wrote their scores: each job's table and the shared results store hold 4 scored crops per model.
    per_job = pd.concat([pd.read_csv(sweep / str(i) / "scores.csv") for i in range(len(MODELS))])
    assert sorted(per_job["inspected"].unique()) == sorted(MODELS)
    store = ResultStore(tmp_path / "results" / "cache" / "scores").load()
    assert store.groupby("model").size().to_dict() == dict.fromkeys(MODELS, 4)
    assert (store["status"] == "ok").all() and store["score"].notna().all() and (store["score"] > 0).all()
