"""Robustness: Table 1 under AEROBLADE's perturbations, per method (:mod:`latenttracer.studies.robustness`).

    python -m experiments.robustness                              # `make robustness` (conf/robustness.yaml)
    python -m experiments.robustness perturbation=aeroblade_grid  # the 21 conditions
    python -m experiments.robustness experiment=robustness_full   # + every member, every image, RONAN

The same as ``python -m experiments.study --config-name robustness`` (config ``conf/robustness.yaml``).
"""

from experiments.study import entry_point

main = entry_point("robustness")

if __name__ == "__main__":
    main()
