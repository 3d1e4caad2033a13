"""Cascade settings against cost and agreement (:mod:`latenttracer.studies.cascade_frontier`).

    python -m experiments.cascade_frontier                        # the screen: fast_rms (the default)
    python -m experiments.cascade_frontier debug=default         # a smoke run

The same as ``python -m experiments.study --config-name cascade_frontier``.
"""

from experiments.study import entry_point

main = entry_point("cascade_frontier")

if __name__ == "__main__":
    main()
