"""``dst-train`` with this folder's algorithm registered and its model importable:

    python docs/examples/train.py hydra.searchpath=[file://docs/examples/conf] sparsity=saliency_rigl

Python puts this folder first on the import path, so ``model._target_=my_model.ResidualMLP`` imports too.
"""

import my_algorithm  # noqa: F401  (registers "saliency_rigl")

from dst.app.cli import main

if __name__ == "__main__":
    main()
