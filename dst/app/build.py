"""Build a run's parts from a plain config dict: the model (built in, or the user's own by
``model._target_``), the optimizer and the algorithm's settings. Hydra-free."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys

import flax.linen as nn
import jax

from dst.app.validate import ConfigError
from dst.models import build_model
from dst.optimizers import make_optimizer
from dst.train.step import smoothed_cross_entropy

# Keys of conf/model that describe the entry rather than the module's fields.
MODEL_META_KEYS = ("name", "_target_")


def import_target(target: str, field: str = "model._target_"):
    """``"my_package.MyNet"`` -> the object, or :class:`ConfigError` naming ``field`` and what failed."""
    module_name, _, attr = str(target).rpartition(".")
    if not module_name:
        raise ConfigError(f"{field} must be a dotted path such as my_package.thing; got {target!r}.")
    try:
        module = _import_here_too(module_name)
    except ImportError as err:
        raise ConfigError(f"{field}={target} cannot be imported: {err} (is {module_name} on "
                          f"PYTHONPATH?).") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{field}={target}: module {module_name} has no attribute {attr!r}.")
    return getattr(module, attr)


def _import_here_too(module_name: str):
    """Import ``module_name`` from ``sys.path``, else from the working directory (``python -m`` looks
    there, the ``dst-train`` script does not: experiments' components import either way)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        cwd = os.getcwd()
        if cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def make_model(model_cfg: dict, num_classes: int, say=print) -> nn.Module:
    """The flax.linen module the config names.

    Built-in models by ``model.name`` with the other keys as options. With ``model._target_``, that
    class (or factory) is called with the keys it accepts as fields or arguments, plus
    ``num_classes`` when it takes one and the config does not set it; keys it does not take (the
    model group's own defaults, such as ``dropout``) are left out and named on the console.
    """
    options = {k: v for k, v in model_cfg.items() if k not in MODEL_META_KEYS}
    target = model_cfg.get("_target_")
    if not target:
        try:
            return build_model(model_cfg["name"], num_classes=num_classes, **options)
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None
    factory = import_target(target)
    accepted = _accepted_names(factory)
    if accepted is not None:
        left_out = sorted(set(options) - accepted)
        if left_out:
            say(f"model: {target} takes no {', '.join(left_out)}; left out of its arguments.")
        options = {k: v for k, v in options.items() if k in accepted}
        if "num_classes" in accepted:
            options.setdefault("num_classes", num_classes)
    try:
        model = factory(**options)
    except Exception as err:  # the user's constructor: any failure is a config problem
        raise ConfigError(f"model._target_={target} could not be built with {options}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={target} must build a flax.linen Module; got {type(model).__name__}.")
    return model


def _accepted_names(factory) -> set[str] | None:
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return {f.name for f in dataclasses.fields(factory) if f.init and f.name not in ("parent", "name")}

    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def make_tx(cfg: dict, total_steps: int, say=print):
    """The optax transformation: a built-in optimizer by ``optimizer.name``, or with
    ``optimizer._target_`` the factory it names, called with the keys it accepts (``total_steps``
    too, when it takes it); the group's other keys are left out and named on the console."""
    opt = dict(cfg["optimizer"])
    target = opt.pop("_target_", None)
    if not target:
        return make_optimizer(opt.pop("name"), total_steps, **opt)
    factory = import_target(target, "optimizer._target_")
    opt["total_steps"] = total_steps
    accepted = _accepted_names(factory)
    if accepted is not None:
        left_out = sorted(set(opt) - accepted - {"name", "total_steps"})
        if left_out:
            say(f"optimizer: {target} takes no {', '.join(left_out)}; left out of its arguments.")
        opt = {k: v for k, v in opt.items() if k in accepted}
    try:
        return factory(**opt)
    except Exception as err:  # the user's factory: any failure is a config problem
        raise ConfigError(f"optimizer._target_={target} could not be built with {opt}: {err}") from None


def make_loss(trainer: dict):
    """``trainer.loss`` (a dotted path to ``(logits, labels) -> scalar``), else cross-entropy with
    ``trainer.label_smoothing``."""
    if trainer.get("loss"):
        return import_target(trainer["loss"], "trainer.loss")
    return smoothed_cross_entropy(trainer.get("label_smoothing", 0.0))


def loader_options(ds: dict) -> dict:
    """The data loader's options that ``dataset`` sets (``label_mode``, ``subset``)."""
    return {k: ds[k] for k in ("label_mode", "subset") if ds.get(k) is not None}


def augment_options(ds: dict, data) -> dict:
    """The augmentation's options that ``dataset`` sets (crop padding and its fill value)."""
    if ds.get("augment", "none") == "none":
        return {}
    # Pad with the normalised value of a black pixel, as torchvision pads before it normalises.
    return {"padding": ds.get("crop_padding", 4), "pad_value": data.pad_value}


def epoch_loop(setting: str, convolutional: bool) -> str:
    """``auto``: a host loop of jitted steps for conv nets on CPU (XLA CPU runs convolutions inside a
    loop body tens of times slower, see :class:`dst.train.epoch.HostLoopEpoch`), else one ``lax.scan``."""
    if setting != "auto":
        return setting
    return "host" if convolutional and jax.default_backend() == "cpu" else "scan"
