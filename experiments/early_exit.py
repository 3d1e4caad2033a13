"""Early exit and faster schedules against the authors' full run (:mod:`latenttracer.studies.early_exit`).

    python -m experiments.early_exit                               # the authors' schedule (inversion=paper)
    python -m experiments.early_exit inversion=fast_rms               # a faster schedule: its rows are added
    python -m experiments.early_exit debug=default                  # a smoke run

The same as ``python -m experiments.study --config-name early_exit`` (config ``conf/early_exit.yaml``).
"""

from experiments.study import entry_point

main = entry_point("early_exit")

if __name__ == "__main__":
    main()
