"""Make the image sets of a suite ahead of the jobs that use them (they would make them too, one at a time).

    python -m experiments.generate                                  # every set of the suite (zoo by default)
    python -m experiments.generate images=kl-a                      # one model's generated set
    python -m experiments.generate -m hydra/launcher=joblib hydra.launcher.n_jobs=2 images=kl-a,kl-b,vq
    python -m experiments.generate experiment=table1_paper device=cuda images=sd15
    python -m experiments.generate suite.generated.seed=1           # sets of another seed, beside the seed-0 sets

How a set is made comes only from the suite (``suite.generated``, ``suite.models.<name>``; see
:mod:`data_gen.sets`), so ``invert``, ``table1`` and ``ablations`` given the same overrides find exactly these
sets. Config: ``conf/generate.yaml``.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import data_gen.sets as data_sets
from experiments import common
from latenttracer import protocol

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, int]:
    """Make (resume, extend) the sets ``cfg.images`` names; returns {set: number of images}."""
    common.setup(cfg)
    names = list(cfg.suite.models) + [protocol.REAL] if cfg.images is None else [str(cfg.images)]
    made = {}
    for name in names:
        if name == protocol.REAL:
            made[name] = len(common.real_set(cfg))
            continue
        gen = common.generation_settings(cfg)
        set_dir = data_sets.generate(common.model_spec(cfg, name), gen, device=str(cfg.device),
                                     overwrite=bool(cfg.overwrite), progress=bool(cfg.progress))
        made[name] = gen.n
        log.info("image set %s: %s", name, set_dir)
    return made


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
