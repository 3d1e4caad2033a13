"""A real pretrained decoder (taef2): every method, separation, steps (:mod:`latenttracer.studies.real_decoder`).

    python -m experiments.real_decoder                 # `make real-decoder` (conf/real_decoder.yaml, suite taef2)
    python -m experiments.real_decoder debug=default   # a smoke run

The same as ``python -m experiments.study --config-name real_decoder``; config: ``conf/real_decoder.yaml``.
"""

import hydra
from omegaconf import DictConfig

from experiments import study


@hydra.main(version_base="1.3", config_path="../conf", config_name="real_decoder")
def main(cfg: DictConfig) -> float:
    return study.run(cfg, "real_decoder").objective


if __name__ == "__main__":
    main()
