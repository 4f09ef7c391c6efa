"""Convolutions stored on csr (issue "Sparse convolutions on the kernels"): a stored conv net makes the masked
run's topology decisions, under every kind of update path (static; SET, RigL and SRigL from storage, their
convolutions by the dense rule on each one's dense view; GMP in place; GraNet in place and then from storage; SNFS
on the dense view at every step).

A small WRN (BatchNorm, a stride-2 convolution and a 1x1 shortcut convolution per group) trains on random
CIFAR-shaped batches, once masked and once with every convolution and the classifier stored; after every
step the stored run's dense view must hold exactly the masked run's masks and params within 1e-5, over at
least three topology updates for the dynamic algorithms.
"""

import jax
import numpy as np
import optax
import pytest
from algo_helpers import masks_for

import dst
from dst import backends
from dst import structures
from dst.masks import named_leaves
from dst.models.wide_resnet import WideResNet
from dst.train import stored

STEPS, UPDATE_EVERY, BATCH = 10, 3, 16   # batch 16: SRigL's decisions at 8 flip under a 1e-6 change of the weights


def problem(structure=None):
    model = WideResNet(depth=10, widen_factor=1, num_classes=5)
    x = jax.random.normal(jax.random.key(2), (STEPS, BATCH, 8, 8, 3))
    y = jax.random.randint(jax.random.key(3), (STEPS, BATCH), 0, 5)
    variables = model.init(jax.random.key(0), x[0])
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    layers = dst.sparsifiable_layers(params)
    masks = masks_for(params, 0.75, structure)
    return model, params, model_state, masks, layers, x, y


def algorithm(name):
    if name == "granet":
        return dst.algorithms.make("granet", sparsity=0.9, initial_sparsity=0.75, update_every=UPDATE_EVERY,
                                   end_step=STEPS, drop_fraction=0.3)
    if name == "srigl":
        return dst.algorithms.make("srigl", update_every=UPDATE_EVERY, end_step=1000, drop_fraction=0.3,
                                   structure=structures.fan_in(), min_salient_fraction=0.9)
    if name == "gmp":
        return dst.algorithms.make("gmp", sparsity=0.9, initial_sparsity=0.75, update_every=UPDATE_EVERY,
                                   end_step=STEPS)
    kwargs = {} if name == "static" else dict(update_every=UPDATE_EVERY, end_step=1000, drop_fraction=0.3)
    return dst.algorithms.make(name, **kwargs)


def test_the_convolutions_the_kernels_can_run_are_found_with_their_geometry():
    model, params, _, masks, layers, x, _ = problem()
    geometries, kept = backends.convolutions(model, x[0], layers)
    convs = [n for n in layers if np.ndim(named_leaves(params)[n]) == 4]
    assert set(geometries) == set(convs) and not kept
    assert geometries["stem_conv/kernel"] == backends.ConvGeometry((3, 3, 3, 16), (1, 1), ((1, 1), (1, 1)))
    strided = [n for n, g in geometries.items() if g.strides == (2, 2)]
    assert any(geometries[n].kernel[:2] == (1, 1) for n in strided)        # a 1x1 downsampling shortcut


# `make test` runs RigL (its fully connected layers from storage, its convolutions by the dense rule); `make
# test-slow` the rest (GMP in place among them: `make test` stays near 5 minutes).
slow = pytest.mark.slow


@pytest.mark.parametrize("name", [pytest.param("static", marks=slow), pytest.param("set", marks=slow), "rigl",
                                  pytest.param("gmp", marks=slow),
                                  pytest.param("snfs", marks=slow), pytest.param("granet", marks=slow),
                                  pytest.param("srigl", marks=slow)])
def test_a_conv_net_stored_on_csr_makes_the_masked_runs_decisions(name):
    model, params, model_state, masks, layers, x, y = problem(structures.fan_in() if name == "srigl" else None)
    algo = algorithm(name)
    tx = optax.sgd(0.05, momentum=0.9)
    geometries, _ = backends.convolutions(model, x[0], layers)
    storage = stored.make_storage(model, "csr", masks, layers, capacity=stored.default_capacity(algo),
                                  convolutions=geometries)
    assert set(storage.layout_of) == set(layers)
    masked_step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo).full)
    stored_step = jax.jit(dst.make_train_step(None, tx, algo, storage=storage).full)
    a = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, model_state)
    b = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, model_state, storage=storage)
    updates = 0
    for i in range(STEPS):
        a, ma = masked_step(a, (x[i], y[i]))
        b, mb = stored_step(b, (x[i], y[i]))
        updates += int(ma["updated"])
        assert bool(mb["updated"]) == bool(ma["updated"])
        np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=1e-5)
        dense_p, dense_m = stored.expand_state(storage, b.params, b.live, b.topologies)
        jax.tree_util.tree_map(np.testing.assert_array_equal, dense_m, a.masks)
        jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, atol=1e-5), dense_p, a.params)
        jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, atol=1e-5), b.model_state,
                               a.model_state)
    paths = {"set": "from storage", "rigl": "from storage", "gmp": "in place", "snfs": "every step",
             "granet": "in place, then from storage", "srigl": "from storage"}
    if name in paths:   # the fully connected layers from storage, the convolutions on their own dense view
        assert stored.update_path(algo, storage)[0] == paths[name]
    if algo.dynamic:
        assert updates >= 3
        assert not np.array_equal(named_leaves(a.masks)["layer1_0/conv1/kernel"],
                                  named_leaves(masks)["layer1_0/conv1/kernel"])
    # The step runs the compiled convolution, not XLA's.
    text = jax.jit(dst.make_train_step(None, tx, algo, storage=storage).full).lower(b, (x[0], y[0])).as_text()
    assert "dst_conv" in text and "dst_conv_dx" in text and "dst_conv_dw" in text


def grouped_dilated_problem():
    from user_models import GroupedDilatedNet

    model = GroupedDilatedNet(num_classes=5)
    x = jax.random.normal(jax.random.key(1), (4, 9, 9, 3))
    params = model.init(jax.random.key(0), x)["params"]
    return model, x, params, dst.sparsifiable_layers(params)


def test_a_grouped_or_dilated_convolution_stays_masked_and_forcing_it_is_one_sentence():
    """The kernels run neither groups nor dilation: such a convolution is kept with its reason; one forced into
    storage with a hand-made geometry is refused in one sentence naming the layer, not a shape error."""
    model, x, params, layers = grouped_dilated_problem()
    geometries, kept = backends.convolutions(model, x, layers)
    assert set(geometries) == {"plain/kernel"}
    assert kept == {"grouped/kernel": "grouped (2 groups)", "dilated/kernel": "dilated"}
    masks = masks_for(params, 0.5)
    forced = {**geometries, "grouped/kernel": backends.ConvGeometry((3, 3, 4, 8), (1, 1), "SAME")}
    storage = stored.make_storage(model, "csr", masks, layers, convolutions=forced)
    values, _, topologies = backends.compress(storage.backend, storage.layout_of, params, masks)
    with pytest.raises(ValueError) as err:
        storage.apply_fn(backends.Stored(values, topologies), {}, x, False, None)
    assert str(err.value) == (
        "sparsity.backend=csr cannot run grouped/kernel on its kernels: the convolution is grouped (2 groups), and "
        "they run 2-D convolutions without groups or dilation with SAME, VALID or explicit padding; leave it out of "
        "the stored convolutions (dst.backends.convolutions keeps it masked).")
    # As found, the plain convolution is stored and the other two run masked: the same logits as the masked model.
    storage = stored.make_storage(model, "csr", masks, layers, convolutions=geometries)
    assert "plain/kernel" in storage.layout_of and not {"grouped/kernel", "dilated/kernel"} & set(storage.layout_of)
    masked = dst.apply_masks(params, masks)
    values, _, topologies = backends.compress(storage.backend, storage.layout_of, masked, masks)
    logits, _ = storage.apply_fn(backends.Stored(values, topologies), {}, x, False, None)
    expected = model.apply({"params": masked}, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


ZOO = ["lenet5", "vgg16", "wrn22_2", "wrn28_2", "wrn16_8", "resnet18", "resnet50", "vit_tiny"]


@pytest.mark.parametrize("name", [n if n == "lenet5" else pytest.param(n, marks=slow) for n in ZOO])
def test_every_zoo_model_runs_with_its_convolutions_stored(name):
    """Each model of the zoo at 90% ERK on csr stores every convolution (ViT: its patch embedding; LeNet-5 takes
    28x28x1, the rest 32x32x3): its loss (to 1e-5) and every stored layer's weight gradients at a batch of 8 (to
    1e-4 of the layer's largest) are those of the masked model, computed in float64 or by XLA in float32.

    Either one: XLA's own float32 gradient of VGG-16's first convolution (3 input channels) misses float64 by 1%
    of its largest entry, where the kernels' is within 1e-6; and in WRN-16-8 a ReLU that float64 and float32
    decide differently moves one output channel's gradients by 0.1% in both float32 programs alike. A misplaced
    or wrong weight gradient is far from both. Evaluation mode (BatchNorm's running averages): in training mode
    deep BatchNorm nets at batch 8 from initialisation are ill-conditioned in float32 (the masked ResNet-50's
    gradients miss float64 by 10%); the WRN equivalence tests above train with batch statistics."""
    from dst.models import build_model
    from dst.train.apply import flax_apply

    model = build_model(name, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1) if name == "lenet5" else (8, 32, 32, 3))
    y = jax.numpy.arange(8) % 10
    variables = model.init(jax.random.key(0), x)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    layers = dst.sparsifiable_layers(params)
    convs = {n for n in layers if np.ndim(named_leaves(params)[n]) == 4}
    geometries, kept = backends.convolutions(model, x, layers)
    assert convs and set(geometries) == convs and not kept
    masks = masks_for(params, 0.9)
    storage = stored.make_storage(model, "csr", masks, layers, convolutions=geometries)
    assert convs <= set(storage.layout_of)
    masked = dst.apply_masks(params, masks)
    values, slots, topologies = backends.compress(storage.backend, storage.layout_of, masked, masks)

    def loss(apply, p, state, inputs):
        logits, _ = apply(p, state, inputs, False, None)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    stored_apply = lambda p, *rest: storage.apply_fn(backends.Stored(p, topologies), *rest)
    got, grads = jax.jit(jax.value_and_grad(lambda v: loss(stored_apply, v, model_state, x)))(values)
    _, xla = jax.jit(jax.value_and_grad(lambda p: loss(flax_apply(model), p, model_state, x)))(masked)
    with jax.enable_x64(True):
        wide = lambda tree: jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a, jax.numpy.float64), tree)
        want, exact = jax.jit(jax.value_and_grad(lambda p: loss(flax_apply(model), p, wide(model_state), wide(x))))(
            wide(masked))
        want, exact = float(want), {n: np.asarray(a) for n, a in named_leaves(exact).items()}
    np.testing.assert_allclose(got, want, rtol=1e-5)
    g, s, m, xla = (named_leaves(t) for t in (grads, slots, masks, xla))
    for layer, layout in storage.layout_of.items():
        w, _ = storage.backend.expand(g[layer], s[layer], topologies[layer], layout)
        scale = float(np.abs(exact[layer]).max())
        errors = [float(np.abs(np.asarray(w) - np.where(m[layer], ref[layer], 0)).max()) / scale
                  for ref in (exact, xla)]
        assert min(errors) <= 1e-4, (layer, errors)
