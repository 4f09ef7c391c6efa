"""Run the real dst-train program in a subprocess."""

import os
import subprocess
import sys

ENV = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}


def dst_train(*overrides, cwd, timeout=600):
    """``python -m dst.train <overrides>`` (the same program as the ``dst-train`` script)."""
    return subprocess.run([sys.executable, "-m", "dst.train", *overrides], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def forced_devices(count, env=None):
    """``env`` (default ENV) with ``count`` forced host devices, keeping the XLA flags it already has."""
    env = dict(ENV if env is None else env)
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={count}"]).strip()
    return env
