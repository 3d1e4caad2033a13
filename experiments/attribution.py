"""Attribution across the K models of the suite, per method, from stored scores
(:mod:`latenttracer.studies.attribution`).

    python -m experiments.attribution            # -> results/attribution.{md,csv} + figures/confusion_<method>.*

The same as ``python -m experiments.study --config-name attribution`` (config ``conf/attribution.yaml``).
"""

from experiments.study import entry_point

main = entry_point("attribution")

if __name__ == "__main__":
    main()
