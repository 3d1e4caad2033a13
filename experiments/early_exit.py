"""Early exit and faster schedules against the authors' full run (:mod:`latenttracer.studies.early_exit`).

    python -m experiments.early_exit                               # the authors' schedule (inversion=paper)
    python -m experiments.early_exit inversion=fast25               # a faster schedule: its rows are added
    python -m experiments.early_exit debug=default                  # a smoke run

The same as ``python -m experiments.study --config-name early_exit``; config: ``conf/early_exit.yaml``.
"""

import hydra
from omegaconf import DictConfig

from experiments import study


@hydra.main(version_base="1.3", config_path="../conf", config_name="early_exit")
def main(cfg: DictConfig) -> float:
    return study.run(cfg, "early_exit").objective


if __name__ == "__main__":
    main()
