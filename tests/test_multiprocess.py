"""Several real ``dst-train`` processes as one run (jax.distributed on 127.0.0.1, gloo CPU collectives):
the masks and metrics of a one-process run, each process decoding only its rows of an image folder,
only process 0 writing, a killed process stopping the other in one sentence (and the same command
resuming), an unreachable coordinator in one sentence; plus the pure parts (settings, environment,
the stderr filter) without processes."""

import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections import Counter

import numpy as np
import pytest
from cli_helpers import ENV
from cli_helpers import forced_devices
from idx_data import write_dataset
from image_data import write_folder

from dst.train import distributed
from dst.train import stderr_guard

# One worker runs these, one at a time: their bounded waits (heartbeats, joins) assume no second run of
# several processes beside them.
pytestmark = pytest.mark.xdist_group("several_processes")

CLOCK = ("wall_time", "time/elapsed", "steps_per_sec", "run_dir")

# Imported by every Python process that has this folder on PYTHONPATH: records each file the process
# opens below OPENED_ROOT (PIL opens every image it decodes) in OPENED_LOG; dst itself is unchanged.
SITECUSTOMIZE = textwrap.dedent("""
    import os, sys
    _root, _log = os.environ.get("OPENED_ROOT"), os.environ.get("OPENED_LOG")
    if _root and _log:
        def _hook(event, args):
            if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                path = os.fsdecode(args[0])
                if path.startswith(_root):
                    with open(_log, "a") as f:
                        f.write(path + "\\n")
        sys.addaudithook(_hook)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(overrides, cwd, env=(), umask=0o022):
    """A ``python -m dst.train`` process (the program of ``dst-train``) in ``cwd``, with a JAX compilation
    cache of its own next to it (processes writing one cache at once make jax warn on stderr)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**ENV, "JAX_COMPILATION_CACHE_DIR": str(cwd.parent / f"jax-cache-{cwd.name}"), **dict(env)}
    return subprocess.Popen([sys.executable, "-m", "dst.train", *overrides], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, umask=umask)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def records(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in CLOCK} for r in rows]


def assert_same_records(one, many):
    assert len(one) == len(many) > 0
    for a, b in zip(one, many):
        assert a.keys() == b.keys() and a["step"] == b["step"]
        for key, value in a.items():
            if isinstance(value, (int, float)):
                assert b[key] == pytest.approx(value, abs=1e-5), key


def final_masks(run_dir):
    import jax
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(pathlib.Path(run_dir, "checkpoints").absolute()) as manager:
        tree = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = tree["state"]["state"]
    # A stored run's masks are slot flags: where the weights sit is its topologies.
    leaves = jax.tree_util.tree_leaves_with_path({"live": state["live"], "topologies": state.get("topologies")})
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def written_by_process_1(root):
    """Entries below ``root`` made under process 1's umask (077: nobody else may read them)."""
    return [p for p in [root, *root.rglob("*")] if not p.stat().st_mode & stat.S_IROTH]


@pytest.mark.slow   # three real processes (~1-2 min on 2 busy cores)
def test_two_processes_on_an_image_folder_train_as_one_and_only_process_0_writes(tmp_path):
    folder = write_folder(tmp_path / "images")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    common = ["dataset=image_folder", f"dataset.data_dir={folder}", "dataset.image_size=8", "dataset.workers=2",
              "dataset.chunk_steps=2", "model=mlp", "model.hidden=[32]", "trainer.batch_size=8", "trainer.epochs=2",
              "sparsity=set", "sparsity.update_every=2"]
    port = free_port()

    def env(i, n):
        return {"PYTHONPATH": f"{hook}{os.pathsep}{ENV.get('PYTHONPATH', '')}", "OPENED_ROOT": str(folder),
                "OPENED_LOG": str(tmp_path / f"opened_{n}_{i}"), "DST_COORDINATOR": f"127.0.0.1:{port}",
                "DST_NUM_PROCESSES": str(n), "DST_PROCESS_ID": str(i)}

    # The launcher's environment (DST_*) makes them two processes; neither is told a run directory.
    # Process 1 creates files readable by nobody else (umask 077): any such file in the run is its.
    procs = [launch([*common, "logger=wandb", "logger.mode=offline"], tmp_path / f"cwd{i}", env(i, 2),
                    umask=0o022 if i == 0 else 0o077) for i in range(2)]
    alone = launch([*common, "logger=none", f"hydra.run.dir={tmp_path / 'alone'}"], tmp_path / "cwd_alone",
                   {**env(0, 1), "DST_COORDINATOR": "", "DST_PROCESS_ID": ""})
    (rc0, out0, err0), (rc1, out1, err1), (rc, out, err) = (finish(p) for p in (*procs, alone))
    assert rc == 0, err[-3000:]
    assert rc0 == 0 and rc1 == 0, (err0[-3000:], err1[-3000:])
    assert "jax.distributed: process 1 of 2 (DST_*; coordinator" in out1

    # Process 0 made the run directory under its cwd; process 1 wrote nothing anywhere.
    (run,) = (tmp_path / "cwd0" / "outputs").glob("*/*")
    assert list((tmp_path / "cwd1").iterdir()) == []
    assert f"-> {run}" in out1                       # process 1 used process 0's run directory
    assert written_by_process_1(run) == []
    for name in ("metrics.jsonl", "summary.json", "curves.png", ".hydra/config.yaml", "checkpoints/2", "wandb"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["devices"] == 2 and summary["status"] == "finished"

    # The same masks and metrics as one process training on the whole batches.
    assert_same_records(records(tmp_path / "alone"), records(run))
    assert records(run)[-1]["topology/updates"] > 0
    alone_masks, masks = final_masks(tmp_path / "alone"), final_masks(run)
    assert alone_masks.keys() == masks.keys()
    for name in masks:
        assert np.array_equal(alone_masks[name], masks[name]), name

    # Each process decoded only its rows: half of every training and evaluation batch, together exactly
    # the files the one process decoded (scan() reads one training file up front in every process).
    def opened(log, split):
        files = [line for line in pathlib.Path(log).read_text().splitlines() if f"/{split}/" in line]
        return Counter(files[1:] if split == "train" else files)
    for split, count in (("train", 2 * 4 * 8), ("val", 2 * 12)):   # 2 epochs x 4 steps (36 // 8) x 8 rows;
        whole = opened(tmp_path / "opened_1_0", split)                # 2 evaluations of the 12 val images
        parts = [opened(tmp_path / f"opened_2_{i}", split) for i in range(2)]
        assert sum(whole.values()) == count, split
        assert sum(parts[0].values()) == sum(parts[1].values()) == count // 2, split
        assert parts[0] + parts[1] == whole, split


@pytest.mark.slow
# csr: each device runs the kernels on its rows; born: the layers created in storage from their counts
@pytest.mark.parametrize("backend", ["masked", "csr", "csr born"])
def test_two_processes_of_two_devices_each_keep_the_masks_of_one_device(tmp_path, backend):
    data = write_dataset(tmp_path / "fashion_mnist")
    common = [f"dataset.data_dir={data}", "model=mlp", "model.hidden=[32]", "trainer.batch_size=64",
              "trainer.epochs=2", "sparsity=set", "sparsity.update_every=3", "logger=none",
              f"sparsity.backend={backend.split()[0]}"] + (["sparsity.born_sparse=true"] if "born" in backend else [])
    port = free_port()
    two = {"XLA_FLAGS": forced_devices(2)["XLA_FLAGS"]}
    procs = [launch([*common, "trainer.distributed=on", f"trainer.coordinator=127.0.0.1:{port}",
                     "trainer.num_processes=2", f"trainer.process_id={i}", f"hydra.run.dir={tmp_path / 'run'}"],
                    tmp_path / f"cwd{i}", two) for i in range(2)]
    alone = launch([*common, f"hydra.run.dir={tmp_path / 'alone'}"], tmp_path / "cwd_alone")
    (rc0, out0, err0), (rc1, _, err1), (rc, _, err) = (finish(p) for p in (*procs, alone))
    assert rc == 0 and rc0 == 0 and rc1 == 0, (err[-2000:], err0[-2000:], err1[-2000:])
    assert "2 of 4 devices here" in out0
    assert ("born sparse in csr storage" in out0) == ("born" in backend)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["devices"] == 4 and summary["processes"] == 2
    assert_same_records(records(tmp_path / "alone"), records(tmp_path / "run"))
    alone_masks, masks = final_masks(tmp_path / "alone"), final_masks(tmp_path / "run")
    assert masks.keys() == alone_masks.keys() and (backend == "masked" or any("topologies" in n for n in masks))
    for name in masks:
        assert np.array_equal(alone_masks[name], masks[name]), name


def one_error_line(err: str) -> str:
    """The one line a process ended with; nothing else on stderr but warnings logged before it (e.g.
    orbax removing the unfinished checkpoint of a killed process), no C++ log, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("WARNING:") for line in lines[:-1]), err[-3000:]
    assert not stderr_guard.GLOG.match(lines[-1]) and "Traceback" not in err, err[-3000:]
    return lines[-1]


@pytest.mark.slow
def test_sigterm_stops_both_a_killed_or_hung_process_stops_the_other_in_one_sentence_and_runs_resume(tmp_path):
    # Started as srun would start two tasks (Slurm's variables); the coordinator port from the environment.
    data = write_dataset(tmp_path / "fashion_mnist")
    port = free_port()
    epochs = 30
    overrides = [f"dataset.data_dir={data}", "model=mlp", "model.hidden=[16]", "trainer.batch_size=64",
                 f"trainer.epochs={epochs}", "sparsity=static", "logger=none", "trainer.heartbeat_timeout=5",
                 f"hydra.run.dir={tmp_path / 'run'}"]
    metrics = tmp_path / "run" / "metrics.jsonl"

    def slurm(i):
        return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
                "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "SLURM_STEP_NUM_NODES": "1",
                "JAX_COORDINATOR_PORT": str(port)}

    def start_both_and_wait_for(lines):
        procs = [launch(overrides, tmp_path / f"cwd{i}", slurm(i)) for i in range(2)]
        deadline = time.monotonic() + 300
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= lines):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
            time.sleep(0.1)
        return procs

    # SIGTERM to process 1 alone (a preemption) stops both after the same epoch, with a checkpoint.
    procs = start_both_and_wait_for(2)
    procs[1].send_signal(signal.SIGTERM)
    (rc0, out0, err0), (rc1, out1, err1) = (finish(p, timeout=120) for p in procs)
    assert rc0 == rc1 == 143, (err0[-2000:], err1[-2000:])
    assert "jax.distributed: process 1 of 2 (srun; coordinator localhost:" in out1
    assert one_error_line(err0).startswith("preempted: stopped by SIGTERM after epoch ")
    assert one_error_line(err1) == one_error_line(err0)
    stopped = len(metrics.read_text().splitlines())

    # The same command goes on; killing process 0 (the coordinator's) ends process 1 in one sentence.
    procs = start_both_and_wait_for(stopped + 1)
    procs[0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    rc, out, err = finish(procs[1], timeout=120)
    waited = time.monotonic() - killed
    procs[0].communicate()
    assert rc != 0 and waited < 30, (rc, waited)
    line = one_error_line(err)
    assert line.startswith("error: process 1 of 2: ") and "the run stopped here" in line, line
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / str(stopped)}" in out

    # Once more from process 0's last checkpoint; a process that hangs (SIGSTOP) rather than dies ends
    # the other after trainer.heartbeat_timeout, in one sentence too.
    resumed = len(metrics.read_text().splitlines())
    procs = start_both_and_wait_for(resumed + 1)
    procs[1].send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    rc, out, err = finish(procs[0], timeout=120)
    waited = time.monotonic() - stopped_at
    procs[1].send_signal(signal.SIGKILL)
    _, out1, _ = finish(procs[1])
    assert rc != 0 and waited < 30, (rc, waited)
    assert one_error_line(err) == (
        "error: process 0 of 2: jax.distributed reports that another process of the run died or stopped answering "
        "(trainer.heartbeat_timeout=5 s); the run stopped here: start every process again with the same command "
        "to resume from the last checkpoint.")
    assert "resuming from" in out and "resuming from" in out1


@pytest.mark.slow
def test_an_unreachable_coordinator_or_a_port_in_use_is_one_sentence(tmp_path):
    # Process 1 finds nobody at its port; a process 0 waits for a process 1 that never comes; another
    # process 0 finds its port taken by another program.
    base = ["logger=none", "trainer.distributed=on", "trainer.num_processes=2", "trainer.join_timeout=3"]
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    ports = free_port(), free_port(), taken.getsockname()[1]
    t0 = time.monotonic()
    procs = [launch([*base, f"trainer.coordinator=127.0.0.1:{port}", f"trainer.process_id={i}",
                     f"hydra.run.dir={tmp_path / f'run{k}'}"], tmp_path / f"cwd{k}")
             for k, (i, port) in enumerate(zip((0, 1, 0), ports))]
    (rc0, _, err0), (rc1, _, err1), (rc2, _, err2) = (finish(p, timeout=120) for p in procs)
    taken.close()
    assert time.monotonic() - t0 < 90
    assert rc0 != 0 and rc1 != 0 and rc2 == 1
    assert one_error_line(err1) == (
        f"error: process 1 of 2: could not reach the jax.distributed coordinator at 127.0.0.1:{ports[1]} "
        f"(trainer.coordinator) within 3 s (trainer.join_timeout); start every process with the same coordinator "
        f"address, and check that process 0 runs and its port is reachable.")
    assert one_error_line(err0).startswith(f"error: process 0 of 2: not all 2 processes joined at 127.0.0.1:{ports[0]}")
    assert one_error_line(err2) == (f"error: process 0 of 2 could not listen on 127.0.0.1:{ports[2]} "
                                    f"(trainer.coordinator): the port is in use; choose another port for the "
                                    f"coordinator.")
    assert not any((tmp_path / f"run{k}").exists() for k in range(3))


# The pure parts: which settings and environments make a process one of several.

def test_a_process_runs_alone_unless_settings_or_environment_say_otherwise():
    assert distributed.detect({}, env={}) is None
    assert distributed.detect({"distributed": "auto"}, env={"DST_NUM_PROCESSES": "1"}) is None
    assert distributed.detect({"distributed": "off"}, env={"DST_NUM_PROCESSES": "2", "DST_PROCESS_ID": "1",
                                                           "DST_COORDINATOR": "h:1"}) is None


def test_settings_win_over_dst_variables_which_win_over_srun():
    env = {"DST_NUM_PROCESSES": "4", "DST_PROCESS_ID": "3", "DST_COORDINATOR": "a:1",
           "SLURM_JOB_ID": "100", "SLURM_STEP_NODELIST": "gpu[007-009],x", "SLURM_NTASKS": "3",
           "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_NODES": "3"}
    setup = distributed.detect({"distributed": "auto"}, env=env)
    assert (setup.coordinator, setup.num_processes, setup.process_id, setup.source) == ("a:1", 4, 3, "DST_*")
    setup = distributed.detect({"distributed": "auto", "process_id": 0, "coordinator": "b:2"}, env=env)
    assert (setup.coordinator, setup.process_id, setup.source) == ("b:2", 0, "DST_*, trainer.*")
    slurm = {k: v for k, v in env.items() if k.startswith("SLURM")}
    setup = distributed.detect({}, env=slurm)
    # jax's own rule: the first node of the step, port 61440 + job id % 4096; one task per node sees
    # every device of its node.
    assert (setup.coordinator, setup.num_processes, setup.process_id, setup.source) == ("gpu007:61540", 3, 2, "srun")
    assert setup.local_device_ids is None
    two_per_node = {**slurm, "SLURM_NTASKS": "6", "SLURM_LOCALID": "1", "JAX_COORDINATOR_PORT": "1234"}
    setup = distributed.detect({}, env=two_per_node)
    assert setup.local_device_ids == (1,) and setup.coordinator == "gpu007:1234"
    assert distributed.detect({}, env={**two_per_node, "CUDA_VISIBLE_DEVICES": "1"}).local_device_ids is None
    assert distributed.slurm_step({**slurm, "SLURM_NTASKS": "1"}) is None    # sbatch's single task, or srun -n1


@pytest.mark.parametrize("trainer, env, message", [
    ({"distributed": "yes"}, {}, "trainer.distributed must be one of auto, on, off; got 'yes'."),
    ({"distributed": "on"}, {}, "trainer.distributed=on needs trainer.num_processes, trainer.process_id, "
                                "trainer.coordinator (or DST_COORDINATOR"),
    ({"distributed": "on", "num_processes": 2, "process_id": 2, "coordinator": "h:1"}, {},
     "trainer.process_id must be in [0, 2) for 2 processes; got 2."),
    ({}, {"DST_NUM_PROCESSES": "two"}, "DST_NUM_PROCESSES must be an integer; got 'two'."),
    ({"distributed": "on", "num_processes": 2, "process_id": 0, "coordinator": "nohost"}, {},
     "trainer.coordinator must be host:port (the address process 0 listens on); got 'nohost'."),
    ({"distributed": "on", "num_processes": 2, "process_id": 0, "coordinator": "h:1", "join_timeout": 0}, {},
     "trainer.join_timeout must be a positive integer (seconds); got 0."),
])
def test_bad_distributed_settings_are_one_sentence(trainer, env, message):
    with pytest.raises(distributed.DistributedError) as err:
        distributed.detect(trainer, env=env)
    assert str(err.value).startswith(message)


def test_the_stderr_guard_turns_a_fatal_coordination_log_into_one_sentence():
    glog = "E1129 12:17:33.043005    8071 coordination_service.cc:1549] Use error polling to propagate\n"
    fatal = "F1129 12:17:33.043597    8082 client.h:80] Terminating process because the JAX distributed service\n"
    lines = ["compiled\n", stderr_guard.JOINED, "[Gloo] Rank 0 is connected to 1 peer ranks. Expected\n", glog,
             "1\n", fatal, "*** Check failure stack trace: ***\n", "    @     0x7f8bfba40634  absl::Flush()\n"]
    assert list(stderr_guard.filter_lines(iter(lines), "JOIN", "GONE")) == ["compiled\n", "GONE\n"]
    assert list(stderr_guard.filter_lines(iter(lines[3:]), "JOIN", "GONE")) == ["JOIN\n"]
    # A process that said its own error keeps it alone; one that ended otherwise shows the log as it was.
    said = ["error: process 1 of 2: a collective failed\n", glog, fatal]
    assert list(stderr_guard.filter_lines(iter(said), "JOIN", "GONE")) == [said[0]]
    mixed = ["error: process 1 of 2: a collective failed." + glog, "Additional GRPC error information\n"]
    assert list(stderr_guard.filter_lines(iter(mixed), "JOIN", "GONE")) == [mixed[0][:mixed[0].index("E1129")] + "\n"]
    assert list(stderr_guard.filter_lines(iter([glog, "more\n"]), "JOIN", "GONE")) == [glog, "more\n"]
    # The runtime's INFO lines, and other sources' warnings, hold nothing back: later output stays live.
    info = "I1129 12:17:30.000001    8071 service.cc:152] XLA service 0x5 initialized for platform CUDA\n"
    other = "W1129 12:17:30.000002    8071 pjrt_client.cc:10] a warning of another source\n"
    source = [info, other, "Traceback (most recent call last):\n", "still running\n"]
    read = []
    lines = iter(source)
    fed = (read.append(line) or line for line in lines)
    shown = [(line, len(read)) for line in stderr_guard.filter_lines(fed, "JOIN", "GONE")]
    assert shown == [(line, i + 1) for i, line in enumerate(source)]    # each shown as soon as it is read


def test_each_process_evaluates_its_rows_of_every_batch_padded_to_the_same_shape(tmp_path):
    from dst.data import image_folder

    data = image_folder.scan(write_folder(tmp_path / "images", per_class=(2, 4)), image_size=8)   # 12 val
    whole = list(image_folder.eval_batches(data, 8, threads=2))
    parts = [list(image_folder.eval_batches(data, 8, threads=2, shard=(i, 2))) for i in range(2)]
    assert [len(y) for _, y in whole] == [8, 4]
    assert [[len(y) for _, y, _ in p] for p in parts] == [[4, 4], [4, 4]]
    for k, (x, y) in enumerate(whole):
        xs = np.concatenate([parts[0][k][0], parts[1][k][0]])
        ys = np.concatenate([parts[0][k][1], parts[1][k][1]])
        valid = np.concatenate([parts[0][k][2], parts[1][k][2]])
        assert valid.sum() == len(y) and not valid[len(y):].any()
        np.testing.assert_array_equal(xs[:len(y)], x)
        np.testing.assert_array_equal(ys[:len(y)], y)
    with pytest.raises(ValueError, match="shard must be"):
        image_folder.eval_batches(data, 8, shard=(0, 3))


def test_importing_dst_starts_no_jax_backend():
    # jax.distributed.initialize must come before any use of JAX: importing the program may not use it.
    code = ("import dst.app.cli, dst.app.run, dst.app.seeds\n"
            "from jax._src import xla_bridge\n"
            "assert not xla_bridge.backends_are_initialized(), 'a module of dst used JAX at import'\n")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
