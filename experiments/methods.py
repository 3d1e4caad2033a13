"""Peer methods in the Table 1 protocol (:mod:`latenttracer.studies.methods`).

    python -m experiments.methods -m hydra/launcher=joblib hydra.launcher.n_jobs=2 threads=1 \\
        method=ronan,latenttracer,aedr,aeroblade_l2,aeroblade_ssim      # one job per method preset
    python -m experiments.methods aggregate=true                         # -> results/methods.{md,csv,tex} + figure

The same as ``python -m experiments.study --config-name methods`` (config ``conf/methods.yaml``).
"""

from experiments.study import entry_point

main = entry_point("methods")

if __name__ == "__main__":
    main()
