"""Decoder drift: kl-a's decoder fine-tuned N steps against its fingerprint (:mod:`latenttracer.studies.drift`).

    python -m experiments.drift                 # `make drift` (conf/drift.yaml)
    python -m experiments.drift steps=[10,100]
    python -m experiments.drift experiment=drift_taef2   # `make drift model=taef2`: a real decoder (taef2)

The same as ``python -m experiments.study --config-name drift``; config: ``conf/drift.yaml``.
"""

import hydra
from omegaconf import DictConfig

from experiments import study


@hydra.main(version_base="1.3", config_path="../conf", config_name="drift")
def main(cfg: DictConfig) -> float:
    return study.run(cfg, "drift").objective


if __name__ == "__main__":
    main()
