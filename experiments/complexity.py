"""Image complexity: Table 1's scores against image complexity and brightness
(:mod:`latenttracer.studies.complexity`).

    python -m experiments.complexity            # `make complexity`, after `make reproduce-table1`

The same as ``python -m experiments.study --config-name complexity``; config: ``conf/complexity.yaml``.
"""

import hydra
from omegaconf import DictConfig

from experiments import study


@hydra.main(version_base="1.3", config_path="../conf", config_name="complexity")
def main(cfg: DictConfig) -> float:
    return study.run(cfg, "complexity").objective


if __name__ == "__main__":
    main()
