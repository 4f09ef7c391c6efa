"""The model contract the trainer calls: ``apply_fn(params, model_state, x, train, rng) -> (logits,
new_model_state)``, and its adapter for flax.linen modules.

``model_state`` holds the model's non-parameter collections (Flax ``batch_stats``; ``{}`` for models
without). In training BatchNorm normalises with the batch statistics and returns updated running
averages; in evaluation it uses the running averages and the state comes back unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import flax.linen as nn
import jax

ApplyFn = Callable  # (params, model_state, x, train, rng) -> (logits, new_model_state)


def _takes_train(model: nn.Module) -> bool:
    try:
        return "train" in inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return True


def flax_apply(model: nn.Module) -> ApplyFn:
    """Adapt a flax.linen model (``__call__(x, train=...)``; a module without a ``train`` argument
    works too) to the trainer's ``apply_fn``. Dropout draws from ``rng`` in training."""
    train_kw = _takes_train(model)

    def apply_fn(params, model_state, x, train, rng):
        variables = {"params": params, **model_state}
        kwargs = {"train": train} if train_kw else {}
        rngs = {"dropout": rng} if (train and rng is not None) else None
        if train and model_state:
            logits, updated = model.apply(variables, x, rngs=rngs, mutable=list(model_state), **kwargs)
            return logits, {**model_state, **updated}
        return model.apply(variables, x, rngs=rngs, **kwargs), model_state

    return apply_fn


def init_model(model: nn.Module, key, sample_x):
    """``(params, model_state)`` of ``model`` initialised from ``key`` for inputs shaped like
    ``sample_x`` (one example with a batch axis is enough)."""
    kwargs = {"train": False} if _takes_train(model) else {}
    # One compiled program: op by op, every initialiser's operations compile one at a time.
    variables = dict(jax.jit(lambda k, x: model.init(k, x, **kwargs))(key, sample_x))
    params = variables.pop("params")
    return params, {name: value for name, value in variables.items() if name != "intermediates"}


def model_state_shapes(model: nn.Module, sample_x):
    """``(params, model_state)`` as shape structs, without computing anything (a fast compatibility
    check of a model and an input shape)."""
    return jax.eval_shape(lambda k: init_model(model, k, sample_x), jax.random.key(0))
