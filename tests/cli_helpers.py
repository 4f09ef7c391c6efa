"""Run the real dst-train program in a subprocess."""

import os
import subprocess
import sys

ENV = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}


def dst_train(*overrides, cwd, timeout=600):
    """``python -m dst.train <overrides>`` (the same program as the ``dst-train`` script)."""
    return subprocess.run([sys.executable, "-m", "dst.train", *overrides], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
