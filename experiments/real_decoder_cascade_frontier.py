"""Cascade settings on the real decoder (:mod:`latenttracer.studies.real_decoder_cascade_frontier`).

    python -m experiments.real_decoder_cascade_frontier            # the screen: fast_rms (the default)

The same as ``python -m experiments.study --config-name real_decoder_cascade_frontier``.
"""

from experiments.study import entry_point

main = entry_point("real_decoder_cascade_frontier")

if __name__ == "__main__":
    main()
