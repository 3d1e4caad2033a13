"""Any registered study (:mod:`latenttracer.studies`) from its config: config in, one library call, publish.

    python -m experiments.study --config-name robustness          # = python -m experiments.robustness
    python -m experiments.study --config-name <name> key=value    # any study with a conf/<name>.yaml

The study is the one registered under the config's name. A study from a plugin file: name the file in
``LATENTTRACER_PLUGINS`` and put its YAML on Hydra's search path (``hydra.searchpath=[file:///some/conf]``);
docs/extending_studies.md shows one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments import common
from latenttracer.studies import STUDIES, StudyResult, publish

CONF = Path(__file__).resolve().parent.parent / "conf"  # absolute: entry_point's task lives in this module


def run(cfg: DictConfig, name: str | None = None) -> StudyResult:
    """Run study ``name`` (default: the name of the job's config) on ``cfg`` and publish its result."""
    name = name or str(HydraConfig.get().job.config_name)
    study = STUDIES.get(name)()
    ctx = common.Context(cfg)
    with common.tracker(cfg, name) as tracker:  # also records the stage's wall time
        result = study.run(cfg, ctx)
        publish(result, ctx.output_dir, tracker)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name=None)
def main(cfg: DictConfig) -> float:
    """Returns the study's objective (for Hydra sweepers)."""
    return run(cfg).objective


def _name_the_job(argv: list[str], name: str | None = None) -> None:
    """Name the job after its study (outputs/<name>/...): add ``hydra.job.name=<name>`` (default: the
    ``--config-name``) among the overrides unless it is given."""
    names = [a.split("=", 1)[1] for a in argv if a.startswith("--config-name=")]
    names += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config-name", "-cn")]
    names = [name] if name else names
    if not names or any(a.startswith("hydra.job.name=") for a in argv):
        return
    overrides = [i for i, a in enumerate(argv) if i > 0 and "=" in a and not a.startswith("-")
                 and argv[i - 1] not in ("--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp")]
    argv.insert(overrides[0] if overrides else len(argv), f"hydra.job.name={names[-1]}")


def entry_point(name: str) -> Callable[[], float]:
    """``python -m experiments.<name>``: study ``name`` with its config ``conf/<name>.yaml``, the job named after
    it (as ``python -m experiments.study --config-name <name>``); returns the study's objective."""

    @hydra.main(version_base="1.3", config_path=str(CONF), config_name=name)
    def task(cfg: DictConfig) -> float:
        return run(cfg, name).objective

    def main() -> float:
        _name_the_job(sys.argv, name)
        return task()

    return main


if __name__ == "__main__":
    _name_the_job(sys.argv)
    main()
