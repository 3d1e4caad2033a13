"""A real pretrained decoder (taef2): every method, separation, steps (:mod:`latenttracer.studies.real_decoder`).

    python -m experiments.real_decoder                 # `make real-decoder` (conf/real_decoder.yaml, suite taef2)
    python -m experiments.real_decoder debug=default   # a smoke run

The same as ``python -m experiments.study --config-name real_decoder`` (config ``conf/real_decoder.yaml``).
"""

from experiments.study import entry_point

main = entry_point("real_decoder")

if __name__ == "__main__":
    main()
