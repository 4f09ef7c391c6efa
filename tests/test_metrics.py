"""Run metrics: dead units, the kernel graph (forward order, sequential pairs, FLOPs), ITOP and the
algorithms' own training-FLOPs accounting."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst import metrics
from dst.graph import kernel_graph
from dst.models import MLP
from dst.models import LeNet5
from dst.models import lenet300


def test_dead_units_in_an_mlp():
    m0 = np.ones((6, 4), bool)
    m1 = np.ones((4, 3), bool)
    m2 = np.ones((3, 2), bool)
    m0[:, 1] = False          # hidden unit 1 of layer 0: no incoming
    m1[3, :] = False          # hidden unit 3 of layer 0: no outgoing
    m2[0, :] = False          # hidden unit 0 of layer 1: no outgoing
    masks = {"l0": {"kernel": m0}, "l1": {"kernel": m1}, "l2": {"kernel": m2}}
    got = metrics.dead_units(masks, [("l0/kernel", "l1/kernel"), ("l1/kernel", "l2/kernel")])
    assert got == {"l0/kernel": 2, "l1/kernel": 1}


def test_dead_units_follow_channels_through_a_flatten():
    # conv (3x3, 1 -> 2 channels) then dense over a flattened (2x2 positions, 2 channels) input.
    conv = np.ones((3, 3, 1, 2), bool)
    dense = np.ones((8, 5), bool)
    dense[np.arange(8) % 2 == 1, :] = False    # every row of channel 1 inactive
    masks = {"c": {"kernel": conv}, "d": {"kernel": dense}}
    assert metrics.dead_units(masks, [("c/kernel", "d/kernel")]) == {"c/kernel": 1}


def _graph(model, shape):
    params, state = dst.init_model(model, jax.random.key(0), jnp.zeros(shape))
    apply_fn = dst.flax_apply(model)
    forward = lambda p: apply_fn(p, state, jnp.zeros(shape), False, None)[0]
    return params, kernel_graph(forward, params, dst.sparsifiable_layers(params))


def test_kernel_graph_follows_the_forward_order_not_the_pytree_order():
    params, graph = _graph(MLP(hidden=(8,) * 11, num_classes=3), (1, 5))
    expected = [f"Dense_{i}/kernel" for i in range(12)]
    assert list(dst.sparsifiable_layers(params))[2] == "Dense_10/kernel"      # pytree order sorts as text
    assert graph.order == expected
    assert graph.pairs == list(zip(expected, expected[1:]))


class _Residual(nn.Module):
    """conv -> BN -> relu -> [conv1 -> BN -> relu -> conv2 -> BN] + identity -> relu -> conv_out -> head."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
        x = nn.relu(bn("bn0")(nn.Conv(4, (3, 3), use_bias=False, name="stem")(x)))
        y = nn.relu(bn("bn1")(nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)))
        y = bn("bn2")(nn.Conv(4, (3, 3), use_bias=False, name="conv2")(y))
        x = nn.relu(x + y)
        x = nn.relu(nn.Conv(6, (3, 3), name="conv_out")(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def test_kernel_graph_pairs_nothing_across_a_residual_addition():
    _, graph = _graph(_Residual(), (1, 8, 8, 2))
    assert graph.order == ["stem/kernel", "conv1/kernel", "conv2/kernel", "conv_out/kernel", "head/kernel"]
    # stem feeds conv1 and the addition; conv2 and stem both feed conv_out: only two clean pairs.
    assert graph.pairs == [("conv1/kernel", "conv2/kernel"), ("conv_out/kernel", "head/kernel")]
    masks = jax.tree_util.tree_map(lambda p: np.ones(p.shape, bool), _graph(_Residual(), (1, 8, 8, 2))[0])
    assert set(metrics.dead_units(masks, graph.pairs)) == {"conv1/kernel", "conv_out/kernel"}


def test_layer_flops_of_dense_and_conv_models():
    model = LeNet5()
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28)))["params"]
    flops = metrics.layer_flops(dst.flax_apply(model), params, {}, jnp.zeros((1, 28, 28)))
    assert flops["Conv_0/kernel"] == 2 * 5 * 5 * 1 * 6 * 28 * 28      # SAME padding keeps 28x28
    assert flops["Conv_1/kernel"] == 2 * 5 * 5 * 6 * 16 * 10 * 10     # VALID on 14x14 gives 10x10
    assert flops["Dense_0/kernel"] == 2 * 400 * 120
    mlp = lenet300()
    p = mlp.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    assert metrics.layer_flops(dst.flax_apply(mlp), p, {}, jnp.zeros((7, 784))) == {
        "Dense_0/kernel": 2 * 784 * 300, "Dense_1/kernel": 2 * 300 * 100, "Dense_2/kernel": 2 * 100 * 10}


def test_layer_flops_count_every_token_a_dense_layer_sees():
    class Tokens(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            # (N, 5 tokens, 8) inputs. Flax names modules as they are built: the outer Dense(3) is
            # Dense_0 though it runs second.
            return nn.Dense(3)(nn.Dense(16)(x)).mean(axis=1)

    model = Tokens()
    params = model.init(jax.random.key(0), jnp.zeros((1, 5, 8)))["params"]
    flops = metrics.layer_flops(dst.flax_apply(model), params, {}, jnp.zeros((1, 5, 8)))
    assert flops == {"Dense_1/kernel": 2 * 5 * 8 * 16, "Dense_0/kernel": 2 * 5 * 16 * 3}
    assert list(flops) == ["Dense_1/kernel", "Dense_0/kernel"]          # forward order


def test_train_step_flops_are_each_algorithms_own_accounting():
    f_s, f_d, f_b = 10.0, 100.0, 20.0
    make = dst.algorithms.make
    assert metrics.train_step_flops(make("static"), 5, f_s, f_d) == 30.0
    assert metrics.train_step_flops(make("dense"), 5, f_d, f_d) == 300.0
    rigl = make("rigl", update_every=100, end_step=1000)
    assert metrics.train_step_flops(rigl, 5, f_s, f_d) == pytest.approx((3 * f_s * 100 + 2 * f_s + f_d) / 101)
    assert metrics.train_step_flops(rigl, 1000, f_s, f_d) == 30.0
    assert metrics.train_step_flops(make("set", update_every=100, end_step=1000), 5, f_s, f_d) == 30.0
    assert metrics.train_step_flops(make("snfs", update_every=100, end_step=1000), 5, f_s, f_d) == 2 * f_s + f_d
    topkast = make("topkast", sparsity=0.9, backward_sparsity=0.8, update_every=100, end_step=1000)
    assert metrics.train_step_flops(topkast, 5, f_s, f_d, f_b) == 2 * f_s + f_b
    granet = make("granet", sparsity=0.9, update_every=100, end_step=1000)
    # GraNet updates up to and including end_step: the dense gradient is paid through step 1000.
    assert metrics.train_step_flops(granet, 1000, f_s, f_d) > 30.0 == metrics.train_step_flops(granet, 1001, f_s, f_d)


def test_a_registered_algorithm_is_logged_by_its_own_hooks():
    name = "half_rigl_for_metrics_test"
    if name not in dst.algorithms.names():
        dst.algorithms.register(name, lambda **kw: dst.algorithms.static()._replace(
            drop_fraction_at=lambda t: 0.5 if t < 10 else 0.0, train_flops=lambda t, fs, fd, fb: fs + fd))
    algo = dst.algorithms.make(name)
    assert metrics.train_step_flops(algo, 3, 10.0, 100.0) == 110.0
    assert algo.drop_fraction_at(3) == 0.5 and algo.drop_fraction_at(10) == 0.0


def test_drop_fraction_at_follows_each_schedule():
    rigl = dst.algorithms.make("rigl", update_every=10, end_step=100, drop_fraction=0.3)
    assert rigl.drop_fraction_at(0) == pytest.approx(0.3)
    assert rigl.drop_fraction_at(50) == pytest.approx(0.15)
    assert rigl.drop_fraction_at(100) == 0.0
    snfs = dst.algorithms.make("snfs", update_every=10, end_step=100, drop_fraction=0.5, final_drop_fraction=0.1)
    assert snfs.drop_fraction_at(0) == pytest.approx(0.5) and snfs.drop_fraction_at(50) == pytest.approx(0.3)
    gmp = dst.algorithms.make("gmp", sparsity=0.9, update_every=10, start_step=0, end_step=100)
    s = lambda t: 0.9 * (1 - (1 - t / 100) ** 3)
    assert gmp.drop_fraction_at(10) == pytest.approx(1 - (1 - s(10)) / (1 - s(0)), rel=1e-5)
    assert gmp.drop_fraction_at(101) == 0.0


def test_itop_rate_counts_only_the_named_layers():
    ever = {"a": {"kernel": np.array([[True, False], [True, True]]), "bias": np.array([True, True])}}
    assert metrics.itop_rate(ever, ["a/kernel"]) == 0.75


@pytest.mark.parametrize("layers", [3, 53])
def test_the_run_plot_fits_any_number_of_layers(tmp_path, layers):
    # ResNet-50 has 53 sparse layers: a legend entry each used to overflow the panel (matplotlib warned
    # that tight_layout could not be applied).
    import warnings

    from dst.plotting import plot_curves

    records = [{"step": s, "test/accuracy": 0.5, "train/accuracy": 0.6, "sparsity/global": 0.9, "itop_rate": 0.1,
                "drop_fraction": 0.3, **{f"sparsity/layer{i:02d}/kernel": 0.9 for i in range(layers)}}
               for s in (10, 20)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_curves(records, tmp_path / "curves.png", "title")
    assert path.read_bytes()[:4] == b"\x89PNG"
