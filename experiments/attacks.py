"""Adaptive attacks: evasion and forgery per method and model (:mod:`latenttracer.studies.attacks`).

    python -m experiments.attacks          # `make attacks` (conf/attacks.yaml)

The same as ``python -m experiments.study --config-name attacks``.
"""

from experiments.study import entry_point

main = entry_point("attacks")

if __name__ == "__main__":
    main()
