"""Peak resident memory of ResNet-50 training at batch 32 on CPU (run under ``/usr/bin/time -f %M``):
dst's jitted train step with RigL at 90% ERK (stem dense), masks stored as bool (one byte per weight).

Run: ``/usr/bin/time -f "peak RSS %M kB" .venv/bin/python benchmarks/resnet50_memory.py``
"""

import jax
import optax

import dst
from dst.models import build_model

model = build_model("resnet50", num_classes=1000)
x = jax.random.normal(jax.random.key(0), (32, 224, 224, 3))
y = jax.random.randint(jax.random.key(1), (32,), 0, 1000)
params, model_state = dst.init_model(model, jax.random.key(2), x[:1])
masks = dst.init_masks(jax.random.key(3), params, dst.layer_densities(params, 0.9, "erk", dense_layers=["^stem_conv/"]))
tx = optax.sgd(0.1, momentum=0.9)
algo = dst.algorithms.make("rigl", update_every=100, end_step=10**6)
state = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, model_state)
step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo))
for _ in range(2):
    state, metrics = step(state, (x, y))
jax.block_until_ready(state)
mask_bytes = sum(m.nbytes for m in jax.tree_util.tree_leaves(state.masks))
weights = sum(p.size for p in jax.tree_util.tree_leaves(state.params))
print(f"masks: {mask_bytes:,} bytes for {weights:,} params ({mask_bytes / weights:.2f} byte per weight); "
      f"loss {float(metrics['loss']):.3f}")
