"""Run the real dst-train program in a subprocess."""

import contextlib
import io
import os
import subprocess
import sys

ENV = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}


def dst_train(*overrides, cwd, timeout=600):
    """``python -m dst.train <overrides>`` (the same program as the ``dst-train`` script)."""
    return subprocess.run([sys.executable, "-m", "dst.train", *overrides], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def dst_train_here(*overrides, cwd):
    """The same program as :func:`dst_train`, run in this process: for runs that end before anything
    compiles (bad settings), where a new interpreter's start-up and imports (2-3 s) would be most of the
    test. Returns what :func:`dst_train` returns (``returncode``, ``stdout``, ``stderr``)."""
    from hydra.core.global_hydra import GlobalHydra

    from dst.app import cli

    out, err = io.StringIO(), io.StringIO()
    argv, here, code = sys.argv, os.getcwd(), 0
    sys.argv = ["dst-train", *overrides]
    GlobalHydra.instance().clear()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(here)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def forced_devices(count, env=None):
    """``env`` (default ENV) with ``count`` forced host devices, keeping the XLA flags it already has."""
    env = dict(ENV if env is None else env)
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={count}"]).strip()
    return env
