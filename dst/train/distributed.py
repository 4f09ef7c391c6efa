"""Several ``dst-train`` processes as one run (``jax.distributed``): one process per host (or per GPU),
each feeding its own rows of every batch to the devices it holds; params, masks and optimizer state are
replicated over all of them (see :mod:`dst.train.devices`).

A process is one of several when the settings say so (``trainer.distributed=on`` with
``trainer.coordinator``, ``trainer.num_processes``, ``trainer.process_id``), when its environment says so
(``DST_COORDINATOR``, ``DST_NUM_PROCESSES``, ``DST_PROCESS_ID``; or Slurm's ``srun`` with more than one
task), unless ``trainer.distributed=off`` (:func:`detect`). :func:`join` then joins the others through
``jax.distributed.initialize``, before anything else uses JAX, with CPU collectives over gloo.

Failures are one sentence rather than a hang or a C++ log: a coordinator's port in use, a coordinator
nobody answers at within ``trainer.join_timeout`` seconds, and a peer that dies (its collectives fail at
once; a peer that stops answering is noticed after ``trainer.heartbeat_timeout`` seconds), after which
the process exits at once, so that the others notice in turn. jaxlib ends a process itself (a C++
abort) when the coordinator does not answer or a peer is reported dead: ``dst-train`` routes its stderr
through :mod:`dst.train.stderr_guard`, which shows one sentence instead.

Only process 0 writes (run directory, checkpoints, wandb); :func:`from_primary` gives every process
what process 0 read, so that resuming does not need the other hosts to see the run directory.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from typing import NamedTuple

MODES = ("auto", "on", "off")
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "DST_COORDINATOR", "DST_NUM_PROCESSES", "DST_PROCESS_ID"
EXIT_LOST_PEER = 1
SLURM_PORT_BASE = 65535 - 2**12 + 1   # as jax's own Slurm detection: the job id picks a port above this


class DistributedError(ValueError):
    """The settings or the environment cannot make this process one of several (one sentence)."""


class JoinError(DistributedError):
    """This process could not join the others in time (the coordinator or a peer never answered)."""


class Setup(NamedTuple):
    """How this process joins the others."""

    coordinator: str            # host:port of process 0's coordination service
    num_processes: int
    process_id: int
    source: str                 # where the numbers came from (trainer.*, DST_*, srun), for messages
    join_timeout: int = 300
    heartbeat_timeout: int = 100
    local_device_ids: tuple[int, ...] | None = None    # None: every local device
    coordinator_source: str = "trainer.coordinator"      # the setting or variable that named it


def _int(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedError(f"{name} must be an integer; got {value!r}.") from None


def slurm_step(env) -> dict | None:
    """What ``srun`` says about this task (``ntasks``, ``procid``, ``coordinator``, ``local_device_ids``),
    or None outside an ``srun`` step of more than one task."""
    needed = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if not all(env.get(k) for k in needed) or _int(env["SLURM_NTASKS"], "SLURM_NTASKS") <= 1:
        return None
    first = re.split(r"[,\[]", env["SLURM_STEP_NODELIST"], maxsplit=1)[0]
    bracket = re.match(r"[^\[,]*\[([^\],-]+)", env["SLURM_STEP_NODELIST"])   # node[001-004] -> node001
    host = first + (bracket.group(1) if bracket else "")
    port = env.get("JAX_COORDINATOR_PORT") or str(int(env["SLURM_JOB_ID"]) % 2**12 + SLURM_PORT_BASE)
    ntasks = int(env["SLURM_NTASKS"])
    nodes = _int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES"), "SLURM_STEP_NUM_NODES") or ntasks
    one_gpu_each = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    # One task per node sees every device of its node; several tasks per node take one device each,
    # unless Slurm already gave each task its own device (--gpus-per-task).
    local = None if ntasks == nodes or len(one_gpu_each) == 1 else (int(env["SLURM_LOCALID"]),)
    return {"ntasks": ntasks, "procid": int(env["SLURM_PROCID"]), "coordinator": f"{host}:{port}",
            "local_device_ids": local}


def detect(trainer: dict, env=None) -> Setup | None:
    """The :class:`Setup` of this process from ``trainer`` (conf/trainer) and the environment, or None
    when it runs alone. Settings win over ``DST_*`` variables, which win over Slurm's."""
    env = os.environ if env is None else env
    mode = trainer.get("distributed", "auto")
    if mode not in MODES:
        raise DistributedError(f"trainer.distributed must be one of {', '.join(MODES)}; got {mode!r}.")
    if mode == "off":
        return None
    slurm = slurm_step(env) or {}
    sources = []

    def pick(key, env_name, slurm_key):
        for value, where in ((trainer.get(key), f"trainer.{key}"), (env.get(env_name), env_name),
                             (slurm.get(slurm_key), "srun")):
            if value is not None and value != "":
                sources.append(where)
                return value, where
        return None, f"trainer.{key}"

    num, num_from = pick("num_processes", ENV_NUM_PROCESSES, "ntasks")
    num = _int(num, num_from)
    if mode == "auto" and (num is None or num <= 1):
        return None
    pid, pid_from = pick("process_id", ENV_PROCESS_ID, "procid")
    pid = _int(pid, pid_from)
    coordinator, coordinator_from = pick("coordinator", ENV_COORDINATOR, "coordinator")
    if coordinator is None and env.get("JAX_COORDINATOR_ADDRESS"):
        coordinator, coordinator_from = env["JAX_COORDINATOR_ADDRESS"], "JAX_COORDINATOR_ADDRESS"
    missing = [name for name, value in (("trainer.num_processes", num), ("trainer.process_id", pid),
                                        ("trainer.coordinator", coordinator)) if value is None]
    if missing:
        raise DistributedError(f"trainer.distributed={mode} needs {', '.join(missing)} (or {ENV_COORDINATOR}, "
                               f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}, or a Slurm srun step) to join the other "
                               f"processes.")
    if num < 1:
        raise DistributedError(f"{num_from} must be a positive integer; got {num}.")
    if not 0 <= pid < num:
        raise DistributedError(f"{pid_from} must be in [0, {num}) for {num} processes; got {pid}.")
    if not re.fullmatch(r"\S+:\d+", str(coordinator)):
        raise DistributedError(f"{coordinator_from} must be host:port (the address process 0 listens on); "
                               f"got {coordinator!r}.")
    join, heartbeat = trainer.get("join_timeout", 300), trainer.get("heartbeat_timeout", 100)
    for key, value in (("join_timeout", join), ("heartbeat_timeout", heartbeat)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DistributedError(f"trainer.{key} must be a positive integer (seconds); got {value!r}.")
    from_slurm = "srun" in sources and trainer.get("process_id") is None and not env.get(ENV_PROCESS_ID)
    families = dict.fromkeys("trainer.*" if s.startswith("trainer.") else "DST_*" if s.startswith("DST_") else s
                             for s in sources)
    return Setup(str(coordinator), num, pid, ", ".join(families), join, heartbeat,
                 slurm.get("local_device_ids") if from_slurm else None, coordinator_from)


def current() -> Setup | None:
    """The setup this process joined with, or None (alone, or not joined yet)."""
    return _SETUP


def join(setup: Setup) -> None:
    """:func:`initialize` once per process; :func:`current` then returns ``setup``."""
    global _SETUP
    if _SETUP is None:
        initialize(setup)
        _SETUP = setup


_SETUP: Setup | None = None


def initialize(setup: Setup) -> None:
    """``jax.distributed.initialize`` for ``setup``: gloo collectives on CPU, a bounded wait for the
    coordinator, and a process that exits with one sentence when a peer stops answering."""
    import jax
    from jax._src import distributed as jax_distributed
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise DistributedError("jax.distributed must start before anything uses JAX; something in this process "
                               "used JAX first.")
    if setup.process_id == 0 and not os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") and _port_taken(setup):
        # jaxlib's server would fail to bind and crash the process (a segfault) rather than raise.
        raise JoinError(join_failure(setup, OSError("address already in use")).removeprefix("error: "))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(setup.coordinator, setup.num_processes, setup.process_id,
                                   local_device_ids=list(setup.local_device_ids) if setup.local_device_ids else None,
                                   cluster_detection_method="deactivate",
                                   initialization_timeout=setup.join_timeout,
                                   heartbeat_timeout_seconds=setup.heartbeat_timeout,
                                   shutdown_timeout_seconds=max(setup.join_timeout, setup.heartbeat_timeout))
    except Exception as err:
        _reset(jax_distributed)
        raise JoinError(join_failure(setup, err).removeprefix("error: ")) from None


def _port_taken(setup: Setup) -> bool:
    """Whether another program listens on the coordinator's port (process 0 binds every address)."""
    import socket

    port = int(setup.coordinator.rsplit(":", 1)[1])
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # a port in TIME_WAIT is free
                sock.bind((address, port))
                return False
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
    return False


def _reset(jax_distributed) -> None:
    """Forget a half-made connection, so that the process can exit without waiting on it."""
    state = jax_distributed.global_state
    state.client = state.service = state.preemption_sync_manager = None


def join_failure(setup: Setup, err: BaseException | None = None) -> str:
    """One sentence for a process that could not join the others."""
    text = "" if err is None else str(err).lower()
    where = f"{setup.coordinator} ({setup.coordinator_source})"
    if "address already in use" in text or "failed to add port" in text:
        return (f"error: process 0 of {setup.num_processes} could not listen on {where}: the port is in use; "
                f"choose another port for the coordinator.")
    if setup.process_id == 0:
        reason = f"not all {setup.num_processes} processes joined at {where}"
    else:
        reason = f"could not reach the jax.distributed coordinator at {where}"
    return (f"error: process {setup.process_id} of {setup.num_processes}: {reason} within {setup.join_timeout} s "
            f"(trainer.join_timeout); start every process with the same coordinator address, and check that "
            f"process 0 runs and its port is reachable.")


def lost_peer_message(setup: Setup | None, err) -> str:
    """One sentence for a process whose peers stopped answering or whose collective failed."""
    who = "" if setup is None else f"process {setup.process_id} of {setup.num_processes}: "
    text = str(err)
    if "heartbeat" in text.lower() or "unhealthy" in text.lower():
        seconds = "" if setup is None else f" for {setup.heartbeat_timeout} s (trainer.heartbeat_timeout)"
        detail = f"another process stopped answering{seconds}"
    else:
        detail = f"a collective with the other processes failed ({_short(text)})"
    return (f"error: {who}{detail}; the run stopped here: start every process again with the same command "
            f"to resume from the last checkpoint.")


def gone_message(setup: Setup) -> str:
    """What a process says when jax.distributed ends it because a peer died or went silent."""
    return (f"error: process {setup.process_id} of {setup.num_processes}: jax.distributed reports that another "
            f"process of the run died or stopped answering (trainer.heartbeat_timeout={setup.heartbeat_timeout} s); "
            f"the run stopped here: start every process again with the same command to resume from the last "
            f"checkpoint.")


def is_lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is what a collective raises when a peer is gone."""
    text = str(err).lower()
    return any(s in text for s in ("gloo", "connection reset", "connection closed", "broken pipe", "unavailable",
                                   "heartbeat", "socket closed", "end of file", "barrier"))


PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Socket closed", "Broken pipe",
             "Connection refused", "heartbeat timeout", "End of file")


def _short(text: str) -> str:
    """The part of a runtime error that says what happened (``Connection reset by peer``), else its
    first line without the RPC details."""
    for phrase in PEER_GONE:
        if phrase.lower() in text.lower():
            return phrase[0].lower() + phrase[1:]
    line = text.strip().splitlines()[0] if text.strip() else "no detail"
    return re.sub(r"\s*\[type\.googleapis\.com[^\]]*\]", "", line)[:200]


def exit_now(message: str, status: int = EXIT_LOST_PEER) -> None:
    """Print ``message`` and end the process at once: no shutdown barrier with peers that may be gone,
    and the peers' collectives fail at once rather than wait for this one."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(2, (message + "\n").encode())    # one write: no other thread's log inside the line
    finally:
        os._exit(status)


def process_count() -> int:
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; the only process of a plain run)."""
    import jax

    return jax.process_index() == 0


def from_primary(read):
    """``read()`` on process 0 (JSON-safe value) given to every process; an exception it raises is
    raised on every process, as the same type when it is a ``ValueError`` subclass of this package, so
    that all of them take the same path. With one process: ``read()``."""
    import jax

    if jax.process_count() == 1:
        return read()
    if is_primary():
        try:
            message = {"value": read()}
        except ValueError as err:
            message = {"error": str(err), "kind": f"{type(err).__module__}:{type(err).__qualname__}"}
        text = json.dumps(message)
    else:
        text = ""
    message = json.loads(broadcast_text(text))
    if "error" in message:
        raise _error_type(message["kind"])(message["error"])
    return message["value"]


def _error_type(kind: str):
    import importlib

    module, _, name = kind.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return ValueError
    return cls if isinstance(cls, type) and issubclass(cls, ValueError) else ValueError


def broadcast_text(text: str) -> str:
    """Process 0's ``text`` on every process (a collective: every process calls it)."""
    return broadcast_bytes(text.encode()).decode()


def broadcast_bytes(data: bytes) -> bytes:
    """Process 0's ``data`` on every process, bit for bit (a collective: every process calls it; what
    the others pass is ignored)."""
    import numpy as np
    from jax.experimental import multihost_utils

    if process_count() == 1:
        return data
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buf = np.zeros(size, np.uint8)
    if is_primary():
        buf[:] = np.frombuffer(data, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8).tobytes()


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process (a collective), e.g. SIGTERM on one process stops them all."""
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
