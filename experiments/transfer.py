"""What transfers: the zoo's findings on the CelebA VAEs and taef2 (:mod:`latenttracer.studies.transfer`).

    python -m experiments.transfer            # `make transfer`, after the runs that store the scores

The same as ``python -m experiments.study --config-name transfer`` (config ``conf/transfer.yaml``).
"""

from experiments.study import entry_point

main = entry_point("transfer")

if __name__ == "__main__":
    main()
