"""Table 1 on eight real pretrained VAEs, intervals, the investigation (:mod:`latenttracer.studies.real_models`).

    python -m experiments.real_models            # `make real-models` runs the whole chain, then this

The same as ``python -m experiments.study --config-name real_models`` (config ``conf/real_models.yaml``).
"""

from experiments.study import entry_point

main = entry_point("real_models")

if __name__ == "__main__":
    main()
