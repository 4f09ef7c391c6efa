"""The SET tutorial's own parts, plugged into dst by ``_target_`` (experiment=set_tutorial).

The IJCAI 2019 / ECML-PKDD 2019 tutorial code (dcmocanu/sparse-evolutionary-artificial-neural-networks,
``Tutorial-IJCAI-2019-Scalable-Deep-Learning/set_mlp.py``; ``SET-MLP-P/set_mlp.py`` at 0305ee7 is the
same file) trains its MLP in ways no standard layer, loss or optimizer reproduces; each is written here
as the code does it, so that dst's trainer, masks and SET update do the rest:

* :class:`TutorialMLP`: N(0, 1)/10 kernels and zero biases; dropout multiplies the hidden ReLU outputs
  by an unscaled keep mask, and its backward pass ignores the mask (the code backpropagates
  ``delta @ W.T * relu'(z)`` with ``z`` unmasked); evaluation multiplies the pre-activations of every
  layer after the first, bias included, by ``1 - dropout``. The logits are the output layer's
  pre-activations (the sigmoid lives in the loss).
* :func:`tutorial_mse`: the code's MSE on ``p = sigmoid(z)``, whose backpropagated delta is
  ``(p - y) * sigmoid'(p)``: its ``Sigmoid.prime`` is applied to the output ``p``, not to ``z``.
  Averaged over the batch (``aᵀ·delta / batch`` in the code's sparse kernel).
* :func:`tutorial_sgd`: ``v = momentum * v - lr * g``; ``w += v - weight_decay * w`` on every weight
  and bias, every step (the decay is not scaled by the learning rate); ``kernel_grad_scale`` multiplies
  kernel gradients (the dense baseline ``fc_mlp.py`` sums them over the batch: ``np.dot(a.T, delta)``,
  while its biases take the batch mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax


class TutorialMLP(nn.Module):
    """784-1000-1000-1000-10 with ReLU hidden layers; see the module docstring for dropout."""

    hidden: Sequence[int] = (1000, 1000, 1000)
    num_classes: int = 10
    dropout: float = 0.2
    init_std: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x.reshape((x.shape[0], -1))
        widths = [*self.hidden, self.num_classes]
        for i, width in enumerate(widths):
            z = nn.Dense(width, kernel_init=nn.initializers.normal(self.init_std),
                         bias_init=nn.initializers.zeros, name=f"Dense_{i}")(h)
            if not train and i > 0:
                z = z * (1.0 - self.dropout)
            if i == len(widths) - 1:
                return z
            h = nn.relu(z)
            if train and self.dropout > 0:
                keep = jax.random.uniform(self.make_rng("dropout"), h.shape) >= self.dropout
                # Forward: the masked activation; backward: as if unmasked (the code's delta ignores it).
                h = h + lax.stop_gradient(jnp.where(keep, h, 0.0) - h)


@jax.custom_vjp
def _mse_on_sigmoid(z, y):
    return jnp.mean((jax.nn.sigmoid(z) - y) ** 2)


def _mse_fwd(z, y):
    p = jax.nn.sigmoid(z)
    return jnp.mean((p - y) ** 2), (p, y)


def _mse_bwd(res, g):
    p, y = res
    s = jax.nn.sigmoid(p)              # Sigmoid.prime applied to the output p, as the code does
    return g * (p - y) * s * (1.0 - s) / p.shape[0], jnp.zeros_like(y)


_mse_on_sigmoid.defvjp(_mse_fwd, _mse_bwd)


def tutorial_mse(logits, labels):
    """The tutorial's loss on the output pre-activations ``logits``: value ``mean((p - y)^2)`` over
    every output of the batch, gradient ``(p - y) * sigmoid'(p) / batch`` with ``p = sigmoid(logits)``."""
    return _mse_on_sigmoid(logits, jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype))


class TutorialSGDState(NamedTuple):
    velocity: optax.Params


def tutorial_sgd(lr: float, momentum: float = 0.9, weight_decay: float = 2e-4,
                 kernel_grad_scale: float = 1.0) -> optax.GradientTransformation:
    """The tutorial's ``_update_w_b``: ``v = momentum * v - lr * g``, update ``v - weight_decay * w``."""

    def scale(path, g):
        is_kernel = getattr(path[-1], "key", None) == "kernel"
        return g * kernel_grad_scale if is_kernel else g

    def init(params):
        return TutorialSGDState(jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(grads, state, params):
        grads = jax.tree_util.tree_map_with_path(scale, grads)
        velocity = jax.tree_util.tree_map(lambda v, g: momentum * v - lr * g, state.velocity, grads)
        updates = jax.tree_util.tree_map(lambda v, w: v - weight_decay * w, velocity, params)
        return updates, TutorialSGDState(velocity)

    return optax.GradientTransformation(init, update)
