"""Attribution across the K models of the suite, per method, from stored scores
(:mod:`latenttracer.studies.attribution`).

    python -m experiments.attribution            # -> results/attribution.{md,csv} + figures/confusion_<method>.*

The same as ``python -m experiments.study --config-name attribution``; config: ``conf/attribution.yaml``.
"""

import hydra
from omegaconf import DictConfig

from experiments import study


@hydra.main(version_base="1.3", config_path="../conf", config_name="attribution")
def main(cfg: DictConfig) -> float:
    return study.run(cfg, "attribution").objective


if __name__ == "__main__":
    main()
