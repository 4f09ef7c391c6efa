"""One training run from a plain config dict, in stages a reader can follow:

1. :func:`prepare`: check every setting, load the data, build the model and the algorithm, and check
   that they fit together: every :class:`ConfigError` is raised here, before anything compiles, but
   one that only an update can reveal (a stored layer grown past ``sparsity.capacity``, which
   :func:`train` raises before logging or saving that epoch);
2. :func:`initialise`: params, model state, masks (one-shot pruning included), the train state, the
   kernel graph (FLOPs, dead-unit pairs) and the compiled epoch;
3. :func:`train`: the epoch loop, which logs a record every ``log_every_epochs`` epochs;
4. the summary, the plot and the wandb run are written at the end, whatever happened.

Hydra-free on purpose: ``dst.app.cli`` resolves the config and calls :func:`run`; tests and notebooks
can call it with a dict.
"""

from __future__ import annotations

import math
import pathlib
import re
import time
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

import dst
from dst import backends
from dst.app.build import augment_options
from dst.app.build import epoch_loop
from dst.app.build import loader_options
from dst.app.build import make_loss
from dst.app.build import make_model
from dst.app.build import make_tx
from dst.app.console import density_list
from dst.app.feeds import first_examples
from dst.app.feeds import make_feed
from dst.app.loop import Track
from dst.app.loop import train_epochs
from dst.app.lottery import next_level_state
from dst.app.lottery import segments
from dst.app.model_checks import check_backend_fits
from dst.app.model_checks import check_dense_layers
from dst.app.model_checks import check_epsilon
from dst.app.model_checks import check_model_takes_data
from dst.app.model_checks import check_structure_fits
from dst.app.model_checks import output_kernel
from dst.app.records import Interval
from dst.app.resume import Start
from dst.app.resume import checkpoint_meta
from dst.app.resume import start_point
from dst.app.resume import stop_on_sigterm
from dst.app.sparse_setup import born_sparse_layers
from dst.app.sparse_setup import initial_densities
from dst.app.sparse_setup import say_update_path
from dst.app.sparse_setup import storage_for
from dst.app.summary import Outcome
from dst.app.summary import finish_run
from dst.app.summary import run_tags
from dst.app.validate import ConfigError
from dst.app.validate import check_algorithm
from dst.app.validate import check_data
from dst.app.validate import validate
from dst.data import DataError
from dst.data import image_folder
from dst.data import load
from dst.data.augment import make_augment
from dst.graph import kernel_graph
from dst.logging import Progress
from dst.logging import RunLogger
from dst.logging import StepProgress
from dst.masks import named_leaves
from dst.structures import UNSTRUCTURED
from dst.train import born_sparse
from dst.train import distributed
from dst.train import stored
from dst.train.checkpoint import RunCheckpoints
from dst.train.devices import DataParallel
from dst.train.evaluate import stream_evaluate_fn
from dst.train.stream import StreamEpoch


class Plan(NamedTuple):
    """What :func:`prepare` checked and built: everything a run needs before it compiles."""

    cfg: dict
    data: Any                # dst.data.Dataset
    algo: Any                # dst.algorithms.SparseAlgorithm
    model: Any               # flax.linen.Module
    steps_per_epoch: int
    epochs: int
    total_steps: int
    parallel: Any = None     # dst.train.devices.DataParallel over several devices, or None (one device)
    structure: Any = None    # dst.structures.Structure of the sparse layers
    undivided: dict = {}     # {layer: why the structure leaves it dense}


class Run(NamedTuple):
    """What :func:`initialise` built: the state to train and the functions that train and measure it."""

    state: Any
    layers: list[str]
    densities: dict[str, float]
    flops: dict[str, float]
    pairs: list[tuple[str, str]]
    step: Any                   # the TrainStep
    epoch_fns: dict[int, Any]   # steps in the epoch -> compiled epoch function
    evaluate: Any
    undivided: dict = {}        # {layer: why the structure leaves it dense}
    storage: Any = None         # dst.train.stored.Storage of a csr/condensed run; None when masked
    auto: dict = {}             # sparsity.backend=auto: {layer: dst.train.auto.LayerTiming}


def prepare(cfg: dict, say=print) -> Plan:
    """Validate, load data, size the run, build the model and the algorithm; raise :class:`ConfigError`
    for any setting that cannot work, before anything compiles."""
    validate(cfg)
    check_data(cfg)
    ds, trainer = cfg["dataset"], cfg["trainer"]
    try:
        if ds["name"] == image_folder.NAME:
            data = image_folder.scan(ds["data_dir"], ds["image_size"], ds.get("resize"))
        else:
            data = load(ds["name"], ds.get("data_dir"), val_fraction=ds["val_fraction"], seed=trainer["seed"],
                        normalize=ds["normalize"], **loader_options(ds))
    except DataError as err:   # a truncated, corrupt or wrong-kind file: one sentence naming it
        raise ConfigError(str(err)) from None
    batch = trainer["batch_size"]
    if batch > len(data.train_y):
        raise ConfigError(f"trainer.batch_size must be at most the {len(data.train_y)} training "
                          f"examples; got {batch}.")
    steps_per_epoch = len(data.train_y) // batch
    total_steps = trainer["epochs"] * steps_per_epoch
    if trainer.get("max_steps"):
        total_steps = min(total_steps, trainer["max_steps"])
    epochs = math.ceil(total_steps / steps_per_epoch)
    algo = check_algorithm(cfg["sparsity"], total_steps, say)
    if algo.levels and algo.rewind_step >= total_steps:
        raise ConfigError(f"sparsity.rewind_step must be less than the run's {total_steps} steps per level "
                          f"(trainer.epochs x {steps_per_epoch} steps per epoch); got {algo.rewind_step}.")
    model = make_model(cfg["model"], num_classes=data.num_classes, say=say)
    params = check_model_takes_data(cfg, model, data.example_shape)
    check_dense_layers(cfg["sparsity"], params)
    if "no_ablation" in cfg["sparsity"] and cfg["sparsity"]["no_ablation"] is None:
        # The classifier, resolved for the algorithm only: the config keeps `null`, the same in every replica.
        resolved = {**cfg["sparsity"], "no_ablation": [f"^{re.escape(output_kernel(model, data.example_shape))}$"]}
        algo = check_algorithm(resolved, total_steps)
    structure, undivided = check_structure_fits(cfg["sparsity"], params, say)
    parallel = DataParallel() if jax.device_count() > 1 else None
    if parallel is not None and parallel.check_batch(batch):
        raise ConfigError(parallel.check_batch(batch))
    check_backend_fits(cfg["sparsity"], algo, params)
    check_epsilon(cfg["sparsity"], algo, params, say)
    plan = Plan(cfg, data, algo, model, steps_per_epoch, epochs, total_steps, parallel, structure, undivided)
    return plan._replace(epochs=len(segments(plan))) if algo.levels else plan


def initialise(plan: Plan, auto_choice_file=None, stream=None) -> Run:
    """Params, model state, masks and the train state from the run's seed; the compiled epoch.
    ``auto_choice_file``: where ``sparsity.backend=auto`` keeps its per-layer choice
    (:func:`dst.app.auto_backend.auto_layers`); ``stream``: where progress within an epoch is printed."""
    cfg, data, algo, model = plan.cfg, plan.data, plan.algo, plan.model
    sp, trainer = cfg["sparsity"], cfg["trainer"]
    key = jax.random.key(trainer["seed"])
    k_init, k_mask, k_state, _ = jax.random.split(key, 4)
    sample = jnp.zeros((1,) + tuple(data.example_shape), jnp.float32)
    shapes = jax.eval_shape(lambda: dst.init_model(model, k_init, sample)[0])
    densities = initial_densities(plan, shapes)
    layers = dst.sparsifiable_layers(shapes)
    apply_fn = dst.flax_apply(model)
    tx = make_tx(cfg, plan.total_steps)
    born = born_sparse_layers(plan, {n: tuple(a.shape) for n, a in named_leaves(shapes).items()}, densities)
    if born:   # created in storage from their counts, never dense
        storage, state = born_sparse.init_state(
            (k_init, k_mask, k_state), trainer["seed"], model, sample, densities, born,
            backend=backends.make(sp["backend"]), tx=tx, algo=algo, structure=plan.structure or UNSTRUCTURED,
            capacity=sp.get("capacity") or stored.default_capacity(algo),
            mesh=None if plan.parallel is None else plan.parallel.mesh)
        params, model_state, timings = shapes, state.model_state, {}
        say_update_path(sp, algo, storage, densities)
    else:
        params, model_state = dst.init_model(model, k_init, sample)
    graph = kernel_graph(lambda p: apply_fn(p, model_state, sample, False, None)[0], params, layers)
    streaming = data.name == image_folder.NAME
    if not streaming:
        train_x, train_y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
    elif algo.prune_at_init is not None:   # SNIP, GraSP: their batches from the stream
        count = min(algo.init_batches * trainer["batch_size"], len(data.train_y))
        train_x, train_y = first_examples(data, trainer["seed"], count, cfg["dataset"]["workers"])
    else:
        train_x = train_y = None
    if not born:
        structure = plan.structure if plan.structure is not None and plan.structure.name != "unstructured" else None
        masks = dst.init_masks(k_mask, params, densities, structure=structure)
        masks = dst.train.prune_at_init(algo, k_mask, params, masks, apply_fn, train_x, train_y,
                                        trainer["batch_size"], model_state=model_state)
        densities = {n: d for n, d in dst.density_report(masks, layers).items() if n != "global"}
        storage, timings = storage_for(plan, params, model_state, masks, densities, layers, auto_choice_file)
        state = dst.create_train_state(k_state, params, masks, tx, algo, model_state, storage=storage)
    if plan.parallel is not None:
        state = plan.parallel.replicate(state)
    step = dst.make_train_step(apply_fn, tx, algo, make_loss(trainer), storage=storage)
    if storage is not None and storage.stores:   # evaluation takes the stored params too
        apply_fn = storage.apply_fn
    every = trainer.get("progress_every_steps")
    loop = epoch_loop(trainer.get("epoch_loop", "auto"), graph.convolutional)
    sharding = None if plan.parallel is None else plan.parallel.batch
    if streaming:    # augmentation happens on the host; one epoch function serves every length
        epoch_fns = {0: StreamEpoch(step, loop, sharding)}
        evaluate = stream_evaluate_fn(apply_fn, min(trainer["eval_batch_size"], len(data.test_y)), sharding,
                                      layers)
    else:
        augment = make_augment(cfg["dataset"].get("augment", "none"), **augment_options(cfg["dataset"], data))
        lengths = {s.steps for s in segments(plan)}   # whole epochs, and a level's first and last
        epoch_fns = {n: dst.train_epoch_fn(step, trainer["batch_size"], augment=augment,
                                           max_steps=None if n == plan.steps_per_epoch else n, loop=loop,
                                           batch_sharding=sharding, progress=every and StepProgress(every, stream))
                     for n in lengths}
        evaluate = dst.evaluate_fn(apply_fn, trainer["eval_batch_size"], sharding, layers)
    return Run(state=state, layers=layers, densities=densities, flops=graph.flops, pairs=graph.pairs, step=step,
               epoch_fns=epoch_fns, evaluate=evaluate, undivided=plan.undivided, storage=storage, auto=timings)


def train(plan: Plan, run: Run, logger: RunLogger, progress: Progress, start: Start, *, save, stopping,
          say=print):
    """The epochs from ``start`` (:func:`dst.app.loop.train_epochs`, one replica): one compiled call per
    epoch, a record every ``log_every_epochs`` epochs (and after the last), appended to ``start.records``
    as it is logged, and a checkpoint (``save(epoch, state, interval, elapsed)``) every
    ``checkpoint_every_epochs`` epochs and after the last. Returns the final state."""
    feed = make_feed(plan, run)
    epoch_key = lambda epoch: jax.random.fold_in(start.data_key, epoch)
    if start.epoch >= plan.epochs:
        say(f"the run already finished its {plan.epochs} epochs; nothing left to train")
        return start.state
    t_compile = time.perf_counter()
    feed.compile(start.state, epoch_key(1))
    say(f"compiled the train epoch in {time.perf_counter() - t_compile:.1f}s")

    def level_change(state, level):
        state = next_level_state(plan, run, state, level)
        say(f"level {level}: density {dst.density_report(state.live, run.layers)['global']:.4f}")
        return state

    track = Track(logger, progress, start.records, start.interval, feed.evaluate)
    return train_epochs(plan, run.storage, run.pairs, start.state, start.epoch, [track],
                        epoch_fn=lambda state, epoch, steps: feed.epoch(state, epoch_key(epoch), steps),
                        level_change=level_change, stopping=stopping,
                        save=lambda epoch, state, elapsed: save(epoch, state, track.interval, elapsed),
                        clock=time.perf_counter() - start.elapsed)


def run(cfg: dict, run_dir, *, stream=None) -> dict:
    """Train as ``cfg`` says, writing every output into ``run_dir``; returns the summary. A run directory
    with a checkpoint is resumed (``trainer.resume=false`` starts over). In a run of several processes
    (:mod:`dst.train.distributed`) every process calls this; only process 0 writes."""
    run_dir = pathlib.Path(run_dir)
    primary = distributed.is_primary()
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = cfg["trainer"]
    progress = Progress(trainer["epochs"], stream=stream)
    say = lambda msg: print(msg, file=progress.stream, flush=True)
    plan = prepare(cfg, say)
    progress.total = plan.epochs
    parts = initialise(plan, auto_choice_file=run_dir / "auto_backend.json", stream=progress.stream)
    checkpoints = RunCheckpoints(run_dir / "checkpoints", keep=trainer.get("keep_checkpoints", 2))
    fresh = Start(epoch=0, state=parts.state, data_key=jax.random.split(jax.random.key(trainer["seed"]), 4)[3],
                  interval=Interval(parts.flops, parts.layers, plan.algo), records=[], elapsed=0.0)
    start = start_point(cfg, run_dir, checkpoints, fresh, say)
    logger_cfg = cfg["logger"]
    logger = RunLogger(run_dir, cfg, use_wandb=logger_cfg["name"] == "wandb",
                       wandb_mode=logger_cfg.get("mode", "disabled"), project=logger_cfg.get("project", "dst"),
                       name=cfg.get("name"), group=logger_cfg.get("group"),
                       tags=[*logger_cfg.get("tags", ()), *run_tags(cfg)], run_id=start.wandb_id, write=primary)
    data = plan.data
    say(f"dst: {cfg.get('name', 'run')} -> {run_dir}")
    say(f"data: {data.source} ({len(data.train_y)} train, {len(data.val_y)} val, {len(data.test_y)} test); "
        f"{plan.total_steps} steps; densities " + density_list(parts.densities))

    def save(epoch, state, interval, elapsed):
        meta = checkpoint_meta(cfg, epoch, int(state.step), interval, start.records, elapsed, logger.run_id)
        checkpoints.save(epoch, state, start.data_key, meta)

    records, outcome, t_start = start.records, Outcome(), time.perf_counter() - start.elapsed
    try:
        with outcome, stop_on_sigterm() as stopping:
            if jax.process_count() > 1:    # SIGTERM on any process stops every process after the same epoch
                stopping = (lambda here: lambda: distributed.any_process(here()))(stopping)
            train(plan, parts, logger, progress, start, save=save, stopping=stopping, say=say)
    finally:
        checkpoints.close()
        summary = finish_run(records, run_dir, cfg, logger, parts, outcome, time.perf_counter() - t_start,
                             devices=1 if plan.parallel is None else plan.parallel.count,
                             **({"processes": jax.process_count()} if jax.process_count() > 1 else {}))
    say(f"metrics: {run_dir / 'metrics.jsonl'}\nsummary: {run_dir / 'summary.json'}\n"
        f"plot:    {run_dir / 'curves.png'}")
    return summary
