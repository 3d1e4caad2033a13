"""Image complexity: Table 1's scores against image complexity and brightness
(:mod:`latenttracer.studies.complexity`).

    python -m experiments.complexity            # `make complexity`, after `make reproduce-table1`

The same as ``python -m experiments.study --config-name complexity`` (config ``conf/complexity.yaml``).
"""

from experiments.study import entry_point

main = entry_point("complexity")

if __name__ == "__main__":
    main()
