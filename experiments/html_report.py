"""The HTML report of the cached results (no inversion): ``report.out``/index.html, self-contained.

    python -m experiments.html_report

Reads what ``table1``, ``figures`` and ``ablations`` published under ``paths.results_dir`` (see
:func:`latenttracer.html_report.build_run_report`); a missing input leaves its section with a note on how to make
it. The hardest cases' reconstructions decode the best latents kept in the results store (``store``; one decode
per image, no inversion). The report folder is logged to W&B as an artifact. Config: ``conf/html_report.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from experiments import common
from latenttracer import html_report
from latenttracer.store import ResultStore

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    common.setup(cfg)
    results = Path(cfg.paths.results_dir)

    def decoder(name: str):
        return common.load_model(cfg, common.model_config(cfg, name))

    with common.tracker(cfg, "report") as tracker:  # also records the stage's wall time
        page = html_report.build_run_report(
            results, cfg.out, decoders=decoder if cfg.decode else None,
            store=ResultStore(cfg.store) if Path(cfg.store).is_dir() else None, image_options=common.image_options(cfg),
            config=common.plain(cfg), metrics=list(cfg.outputs.metrics), n_cases=int(cfg.cases),
            gain=float(cfg.difference_gain), title=f"latenttracer report ({cfg.suite.name})")
        log.info("wrote %s", page)
        print(f"report: {page}", flush=True)
        tracker.log_artifact(page.parent, name="report", type="report")
    return page


@hydra.main(version_base="1.3", config_path="../conf", config_name="html_report")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
