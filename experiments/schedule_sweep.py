"""A faster inversion schedule, searched on calibration images only (:mod:`latenttracer.studies.schedule_sweep`).

    python -m experiments.schedule_sweep -m inversion.steps=25 inversion.lr=0.1,0.2,0.3 inversion.halve_every=10,50
    python -m experiments.schedule_sweep inversion.steps=100       # the authors' reference on the same images
Returns the worst AUC over the inspected models (an objective for a Hydra sweeper).

The same as ``python -m experiments.study --config-name schedule_sweep`` (config ``conf/schedule_sweep.yaml``).
"""

from experiments.study import entry_point

main = entry_point("schedule_sweep")

if __name__ == "__main__":
    main()
