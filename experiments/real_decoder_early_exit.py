"""Early exit and faster schedules on the real decoder (:mod:`latenttracer.studies.real_decoder_early_exit`).

    python -m experiments.real_decoder_early_exit                     # the authors' schedule (inversion=paper)
    python -m experiments.real_decoder_early_exit inversion=fast_rms  # a faster schedule: its rows are added

The same as ``python -m experiments.study --config-name real_decoder_early_exit``.
"""

from experiments.study import entry_point

main = entry_point("real_decoder_early_exit")

if __name__ == "__main__":
    main()
