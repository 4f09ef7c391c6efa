"""Check every user-facing setting before anything is compiled.

Each problem is reported as one sentence naming the field and its allowed values; the CLI prints it and
exits non-zero.
"""

from __future__ import annotations

import inspect
import numbers

from dst import algorithms
from dst import backends
from dst import kernels
from dst import structures
from dst.data import DATASETS
from dst.data import LABEL_MODES
from dst.data import locate
from dst.data.augment import AUGMENTATIONS
from dst.data.datasets import NORMALIZATIONS
from dst.distributions import DISTRIBUTIONS
from dst.logging import WANDB_MODES
from dst.models import MODELS
from dst.optimizers import LR_SCHEDULES
from dst.optimizers import OPTIMIZERS
from dst.schedules import DROP_SCHEDULES
from dst.train.distributed import MODES as DISTRIBUTED_MODES
from dst.train.epoch import LOOPS

LOGGERS = ("wandb", "none")
# Keys of conf/sparsity that every algorithm may carry: they describe the initial masks or the run
# length. They reach an algorithm's factory only when it takes them (GMP takes `sparsity`, RigL does not).
COMMON_KEYS = ("algorithm", "sparsity", "distribution", "erk_power_scale", "dense_layers", "end_fraction",
               "initial_sparsity", "densities", "structure", "backend", "epsilon", "capacity",
               "born_sparse")
# Settings of the structure itself: they build the `structure` an algorithm takes, never reach it alone.
STRUCTURE_KEYS = ("n_m", "block")


class ConfigError(ValueError):
    """A setting is out of range; the message names the field and the allowed values."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _choice(cfg, path, allowed):
    value = _get(cfg, path)
    if value not in allowed:
        raise ConfigError(f"{path} must be one of {', '.join(allowed)}; got {value!r}.")


def _range(cfg, path, lo, hi, *, lo_open=False, hi_open=True, integer=False, optional=False):
    value = _get(cfg, path)
    if optional and value is None:
        return
    ok = _is_int(value) if integer else _is_num(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) if lo is not None else True
        ok = ok and ((value < hi if hi_open else value <= hi) if hi is not None else True)
    if not ok and integer and lo == 0 and hi is None:
        raise ConfigError(f"{path} must be a {'positive' if lo_open else 'non-negative'} integer; got {value!r}.")
    if not ok:
        kind = "an integer" if integer else "a number"
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        bounds = f"in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{path} must be {kind} {bounds}; got {value!r}.")


def _get(cfg, path):
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{path} is missing from the config.")
        node = node[part]
    return node


def algorithm_hparams(sparsity_cfg: dict, total_steps: int) -> dict:
    """The keyword arguments of ``dst.algorithms.make`` from ``conf/sparsity`` (end_step resolved)."""
    accepted = inspect.signature(algorithms.registry.factory(sparsity_cfg["algorithm"])).parameters
    hparams = {k: v for k, v in sparsity_cfg.items()
               if k != "algorithm" and k not in STRUCTURE_KEYS and (k not in COMMON_KEYS or k in accepted)}
    if "structure" in hparams:
        hparams["structure"] = structure_of(sparsity_cfg)
    if "end_step" in hparams and hparams["end_step"] is None:
        hparams["end_step"] = max(1, int(sparsity_cfg.get("end_fraction", 1.0) * total_steps))
    return hparams


def validate(cfg: dict, total_steps: int | None = None) -> None:
    """Raise :class:`ConfigError` for the first setting out of range (data presence included)."""
    _range(cfg, "trainer.seed", 0, None, integer=True)
    if "label_smoothing" in cfg["trainer"]:
        _range(cfg, "trainer.label_smoothing", 0.0, 1.0)
    if not _get(cfg, "model").get("_target_"):
        _choice(cfg, "model.name", MODELS)
    if "dropout" in cfg["model"]:
        _range(cfg, "model.dropout", 0.0, 1.0)
    if cfg["model"].get("name") == "mlp" and not cfg["model"].get("_target_"):
        hidden = _get(cfg, "model.hidden")
        if not hidden or not all(_is_int(h) and h > 0 for h in hidden):
            raise ConfigError(f"model.hidden must be a non-empty list of positive integers; got {hidden!r}.")

    _choice(cfg, "dataset.name", DATASETS)
    _range(cfg, "dataset.val_fraction", 0.0, 1.0)
    _choice(cfg, "dataset.normalize", NORMALIZATIONS)
    if "augment" in cfg["dataset"]:
        _choice(cfg, "dataset.augment", AUGMENTATIONS)
    if "crop_padding" in cfg["dataset"]:
        _range(cfg, "dataset.crop_padding", 0, None, integer=True)
    if "label_mode" in cfg["dataset"]:
        _choice(cfg, "dataset.label_mode", LABEL_MODES)
    if cfg["dataset"]["name"] == "image_folder":
        _check_image_folder(cfg)

    sp = _get(cfg, "sparsity")
    _choice(cfg, "sparsity.algorithm", algorithms.names())
    _check_structure(sp)
    _check_backend(cfg)
    _range(cfg, "sparsity.sparsity", 0.0, 1.0)
    _choice(cfg, "sparsity.distribution", DISTRIBUTIONS)
    _range(cfg, "sparsity.erk_power_scale", 0.0, None, lo_open=True)
    if sp.get("initial_sparsity") is not None:
        _range(cfg, "sparsity.initial_sparsity", 0.0, 1.0)
    if sp.get("epsilon") is not None:
        _range(cfg, "sparsity.epsilon", 0.0, None, lo_open=True)
        if sp["distribution"] != "er":
            raise ConfigError(f"sparsity.epsilon sets SET's Erdos-Renyi counts eps (n_in + n_out) per layer, so "
                              f"sparsity.distribution must be er; got {sp['distribution']}.")
        if sp.get("densities"):
            raise ConfigError("sparsity.epsilon and sparsity.densities both set the layers' densities; give one.")
    if sp["algorithm"] == "dense" and sp["sparsity"] != 0:
        raise ConfigError(f"sparsity.sparsity must be 0 with sparsity.algorithm=dense; got {sp['sparsity']}.")
    if "update_every" in sp:
        _range(cfg, "sparsity.update_every", 0, None, lo_open=True, integer=True)
    if "start_step" in sp:
        _range(cfg, "sparsity.start_step", 0, None, integer=True)
    if "end_step" in sp:
        _range(cfg, "sparsity.end_step", 0, None, lo_open=True, integer=True, optional=True)
    if "end_fraction" in sp:
        _range(cfg, "sparsity.end_fraction", 0.0, 1.0, lo_open=True, hi_open=False)
    if "drop_fraction" in sp:
        _range(cfg, "sparsity.drop_fraction", 0.0, 1.0, hi_open=False)
    if "drop_schedule" in sp:
        _choice(cfg, "sparsity.drop_schedule", DROP_SCHEDULES)
    if "grow_init" in sp:
        _choice(cfg, "sparsity.grow_init", algorithms.base.GROW_INITS)

    _choice(cfg, "optimizer.name", OPTIMIZERS)
    _range(cfg, "optimizer.lr", 0.0, None, lo_open=True)
    _range(cfg, "optimizer.weight_decay", 0.0, None)
    for key in ("momentum", "b1", "b2"):
        if key in cfg["optimizer"]:
            _range(cfg, f"optimizer.{key}", 0.0, 1.0)
    _choice(cfg, "optimizer.schedule", LR_SCHEDULES)
    _range(cfg, "optimizer.warmup_steps", 0, None, integer=True)
    _range(cfg, "optimizer.gamma", 0.0, 1.0, lo_open=True, hi_open=False)
    milestones = _get(cfg, "optimizer.milestones")
    if not all(_is_num(m) and 0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
        raise ConfigError(f"optimizer.milestones must be increasing fractions in (0, 1); got {milestones!r}.")
    if "step_every" in cfg["optimizer"]:
        _range(cfg, "optimizer.step_every", 0, None, lo_open=True, integer=True, optional=True)

    _range(cfg, "trainer.epochs", 1, None, integer=True)
    _range(cfg, "trainer.batch_size", 1, None, integer=True)
    _range(cfg, "trainer.eval_batch_size", 1, None, integer=True)
    _range(cfg, "trainer.log_every_epochs", 1, None, integer=True)
    if "epoch_loop" in cfg["trainer"]:
        _choice(cfg, "trainer.epoch_loop", ("auto",) + LOOPS)
    if cfg["trainer"].get("progress_every_steps") is not None:
        _range(cfg, "trainer.progress_every_steps", 1, None, integer=True)
    if "checkpoint_every_epochs" in cfg["trainer"]:
        _range(cfg, "trainer.checkpoint_every_epochs", 0, None, integer=True)
    if "keep_checkpoints" in cfg["trainer"]:
        _range(cfg, "trainer.keep_checkpoints", 1, None, integer=True)
    if "resume" in cfg["trainer"] and not isinstance(cfg["trainer"]["resume"], bool):
        raise ConfigError(f"trainer.resume must be true or false; got {cfg['trainer']['resume']!r}.")
    if "max_steps" in cfg["trainer"]:
        _range(cfg, "trainer.max_steps", 0, None, lo_open=True, integer=True, optional=True)
    if "distributed" in cfg["trainer"]:
        _choice(cfg, "trainer.distributed", DISTRIBUTED_MODES)
    for key, lo in (("num_processes", 1), ("process_id", 0)):
        if key in cfg["trainer"]:
            _range(cfg, f"trainer.{key}", lo, None, integer=True, optional=True)
    for key in ("join_timeout", "heartbeat_timeout"):
        if key in cfg["trainer"]:
            _range(cfg, f"trainer.{key}", 0, None, lo_open=True, integer=True)

    _choice(cfg, "logger.name", LOGGERS)
    if cfg["logger"]["name"] == "wandb":
        _choice(cfg, "logger.mode", WANDB_MODES)

    if total_steps is not None:
        check_algorithm(sp, total_steps)


def structure_of(sparsity_cfg: dict) -> structures.Structure:
    """The :class:`dst.structures.Structure` that ``sparsity.structure`` (and ``n_m`` / ``block``) name."""
    return structures.make(sparsity_cfg.get("structure") or "unstructured", n_m=sparsity_cfg.get("n_m"),
                           block=sparsity_cfg.get("block"))


def _check_backend(cfg: dict) -> None:
    """``sparsity.backend``: a known one, with its kernels built, on one device and one seed; condensed
    only under a constant fan-in structure."""
    sp = cfg["sparsity"]
    backend = sp.get("backend") or "masked"
    if backend not in backends.BACKENDS + ("auto",):
        raise ConfigError(f"sparsity.backend must be one of {', '.join(backends.BACKENDS + ('auto',))}; "
                          f"got {backend!r}.")
    if sp.get("capacity") is not None:
        _range(cfg, "sparsity.capacity", 1.0, 1000, hi_open=False)
        if backend not in ("csr", "auto"):
            raise ConfigError(f"sparsity.capacity sets the slots of sparsity.backend=csr's stored layers (per starting "
                              f"weight), and this run's backend is {backend}; use csr or leave capacity null.")
    if sp.get("born_sparse", "auto") not in ("auto", True, False):
        raise ConfigError(f"sparsity.born_sparse must be one of auto, true, false; got {sp['born_sparse']!r}.")
    if backend in ("masked", "auto"):   # auto falls back to masked, saying why, where csr cannot run
        return
    if backend == "dense":
        if sp["algorithm"] != "dense":
            raise ConfigError("sparsity.backend=dense trains a plain dense model, so sparsity.algorithm must be "
                              f"dense; got {sp['algorithm']}.")
        return
    structure = sp.get("structure") or "unstructured"
    if backend == "condensed" and structure not in ("fan_in", "n_m"):
        raise ConfigError(f"sparsity.backend=condensed holds a constant fan-in, so sparsity.structure must be fan_in "
                          f"or n_m; got {structure}.")
    if backend == "condensed" and sp.get("min_salient_fraction"):
        raise ConfigError("sparsity.min_salient_fraction must be 0 with sparsity.backend=condensed: SRigL's ablation "
                          "moves a layer's budget onto fewer units, whose fan-in then outgrows the condensed rows; "
                          f"got {sp['min_salient_fraction']} (or use sparsity.backend=csr).")
    if not kernels.available():
        raise ConfigError(f"sparsity.backend={backend} needs the compiled kernels: {kernels.status()}.")


def _check_structure(sp: dict) -> None:
    """``sparsity.structure`` and its settings; under N:M, a null ``sparsity.sparsity`` becomes 1 - N/M."""
    name = sp.get("structure") or "unstructured"
    if name not in structures.STRUCTURES:
        raise ConfigError(f"sparsity.structure must be one of {', '.join(structures.STRUCTURES)}; got {name!r}.")
    try:
        structure = structure_of(sp)
    except ValueError as err:
        raise ConfigError(f"sparsity.{err}") from None
    if name == "n_m" and "levels" not in sp:   # IMP's level 0 is dense; its later levels are N:M
        n, m = sp["n_m"]
        implied = 1.0 - n / m
        if sp.get("sparsity") is None:
            sp["sparsity"] = implied
        elif not _is_num(sp["sparsity"]) or abs(sp["sparsity"] - implied) > 1e-9:
            raise ConfigError(f"sparsity.sparsity must be null or {implied:g} (1 - N/M) with sparsity.structure=n_m "
                              f"and sparsity.n_m={[n, m]}; got {sp['sparsity']!r}.")
    accepted = inspect.signature(algorithms.registry.factory(sp["algorithm"])).parameters
    if structure.name != "unstructured" and "structure" not in accepted:
        raise ConfigError(f"sparsity.structure={name} cannot be kept by sparsity.algorithm={sp['algorithm']}, which "
                          f"takes no structure; use sparsity.structure=unstructured.")


def check_algorithm(sparsity_cfg: dict, total_steps: int, say=None):
    """Build the algorithm once so its own checks (schedule, hyper-parameter names) run early.

    A setting of another algorithm (a preset's RigL schedule when the command line picks
    ``sparsity=static``) is left out, and named through ``say``; a setting no algorithm has is an error.
    """
    name = sparsity_cfg["algorithm"]
    hparams = algorithm_hparams(sparsity_cfg, total_steps)
    accepted = inspect.signature(algorithms.registry.factory(name)).parameters
    foreign = sorted(k for k in set(hparams) - set(accepted) if k in _settings_of_any_algorithm())
    unknown = sorted(set(hparams) - set(accepted) - set(foreign))
    if unknown:
        raise ConfigError(f"sparsity.{unknown[0]} is not a setting of algorithm {name}; its settings are "
                          f"{', '.join(sorted(accepted)) or 'none'}.")
    if foreign and say is not None:
        say(f"sparsity: {name} takes no {', '.join(foreign)} (settings of other algorithms); left out.")
    hparams = {k: v for k, v in hparams.items() if k not in foreign}
    try:
        return algorithms.make(name, **hparams)
    except ValueError as err:
        raise ConfigError(f"sparsity.{err}") from None


def _settings_of_any_algorithm() -> set[str]:
    return {p for n in algorithms.names() for p in inspect.signature(algorithms.registry.factory(n)).parameters}


def _check_image_folder(cfg: dict) -> None:
    """Streamed image folders: their own options, and the features that need the data on the device."""
    _range(cfg, "dataset.image_size", 8, None, integer=True)
    _range(cfg, "dataset.resize", 8, None, integer=True, optional=True)
    _range(cfg, "dataset.workers", 0, None, lo_open=True, integer=True)
    _range(cfg, "dataset.chunk_steps", 0, None, lo_open=True, integer=True)
    if cfg["dataset"]["val_fraction"] != 0:
        raise ConfigError("dataset.val_fraction must be 0 with dataset.name=image_folder (its val/ folder is the "
                          f"test split); got {cfg['dataset']['val_fraction']}.")
    if cfg["dataset"].get("augment", "none") != "none":
        raise ConfigError("dataset.augment must be none with dataset.name=image_folder (the host pipeline "
                          f"crops and flips); got {cfg['dataset']['augment']!r}.")
    if cfg["trainer"].get("seeds") is not None:
        raise ConfigError("trainer.seeds must be null with dataset.name=image_folder (seeds in one program need "
                          "the data on the device); run one seed per job, e.g. -m trainer.seed=0,1,2.")


def check_data(cfg: dict) -> None:
    """The data set must be present before anything else happens."""
    try:
        locate(cfg["dataset"]["name"], cfg["dataset"].get("data_dir"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
