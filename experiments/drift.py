"""Decoder drift: kl-a's decoder fine-tuned N steps against its fingerprint (:mod:`latenttracer.studies.drift`).

    python -m experiments.drift                 # `make drift` (conf/drift.yaml)
    python -m experiments.drift steps=[10,100]
    python -m experiments.drift experiment=drift_taef2   # `make drift model=taef2`: a real decoder (taef2)

The same as ``python -m experiments.study --config-name drift`` (config ``conf/drift.yaml``).
"""

from experiments.study import entry_point

main = entry_point("drift")

if __name__ == "__main__":
    main()
