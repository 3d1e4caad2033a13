"""Robustness: Table 1 under AEROBLADE's perturbations, per method (:mod:`latenttracer.studies.robustness`).

    python -m experiments.robustness                              # `make robustness` (conf/robustness.yaml)
    python -m experiments.robustness perturbation=aeroblade_grid  # the 21 conditions
    python -m experiments.robustness experiment=robustness_full   # + every member, every image, RONAN

The same as ``python -m experiments.study --config-name robustness``; config: ``conf/robustness.yaml``.
"""

import hydra
from omegaconf import DictConfig

from experiments import study


@hydra.main(version_base="1.3", config_path="../conf", config_name="robustness")
def main(cfg: DictConfig) -> float:
    return study.run(cfg, "robustness").objective


if __name__ == "__main__":
    main()
