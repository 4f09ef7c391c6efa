"""The train step: optimizer moments of grown weights, ITOP bookkeeping, evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from algo_helpers import initial_masks
from algo_helpers import make_algorithm
from algo_helpers import tiny_problem
from compile_flags import uses_default_emitters
from compile_flags import with_default_emitters

import dst
from dst.masks import named_leaves
from dst.train import map_param_like

OPTAX_STATES = {
    "sgd_momentum": (lambda: optax.sgd(0.1, momentum=0.9), 1),
    "nesterov": (lambda: optax.sgd(0.1, momentum=0.9, nesterov=True), 1),
    "adam": (lambda: optax.adam(1e-3), 2),
    "adamw": (lambda: optax.adamw(1e-3, weight_decay=1e-4), 2),
    "chain_clip_adamw": (lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), 2),
    "inject_hyperparams_adam": (lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), 2),
    "schedule_sgd": (lambda: optax.sgd(optax.cosine_decay_schedule(0.1, 100), momentum=0.9), 1),
}


@pytest.mark.parametrize("opt", sorted(OPTAX_STATES))
def test_reset_moments_reaches_every_param_shaped_state(opt, tiny_mlp):
    make, n_moments = OPTAX_STATES[opt]
    _, params = tiny_mlp
    tx = make()
    ones = map_param_like(jnp.ones_like, tx.init(params), params)
    reset = jax.tree_util.tree_map(lambda p: jax.random.bernoulli(jax.random.key(0), 0.3, p.shape), params)
    out = dst.reset_moments(ones, params, reset)
    touched = []
    map_param_like(lambda m: touched.append(m) or m, out, params)
    assert len(touched) == n_moments * len(jax.tree_util.tree_leaves(params))
    for m, r in zip(touched, jax.tree_util.tree_leaves(reset) * n_moments):
        np.testing.assert_array_equal(np.asarray(m), np.where(np.asarray(r), 0.0, 1.0))


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
def test_grown_weights_start_with_zero_moments(opt):
    """After an update, the next optimizer step sees no history at grown positions."""
    model, params, x, y = tiny_problem()
    masks = initial_masks("rigl", params, 0.8)
    algo = make_algorithm("rigl", update_every=3, drop_fraction=0.5)
    tx = OPTAX_STATES[opt][0]()
    state = dst.create_train_state(jax.random.key(0), params, masks, tx, algo)
    step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo))
    batch = (x[:64], y[:64])
    for _ in range(3):                      # steps 0 (update), 1, 2: moments build up
        state, _ = step(state, batch)
    state, _ = step(state, batch)           # step 3: update grows weights
    assert bool(state.algo_state.updated)
    grown = named_leaves(state.algo_state.grown)["Dense_0/kernel"]
    assert grown.sum() > 0
    before = state
    state, _ = step(state, batch)           # step 4: moments of grown weights were zeroed first

    grads = jax.grad(lambda p: dst.train.cross_entropy(dst.flax_apply(model)(p, {}, batch[0], True, None)[0],
                                                       batch[1]))(before.params)
    g = np.asarray(named_leaves(grads)["Dense_0/kernel"])[np.asarray(grown)]
    moments = []
    map_param_like(lambda m: moments.append(np.asarray(m)) or m, state.opt_state, state.params)
    first = moments[list(named_leaves(state.params)).index("Dense_0/kernel")][np.asarray(grown)]
    expected = g if opt == "sgd_momentum" else (1 - 0.9) * g   # trace = g + 0.9*0; mu = 0.9*0 + 0.1*g
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-7)


def test_ever_active_tracks_itop():
    model, params, x, y = tiny_problem()
    masks = initial_masks("rigl", params, 0.8)
    algo = make_algorithm("rigl")
    tx = optax.sgd(0.05, momentum=0.9)
    state = dst.create_train_state(jax.random.key(0), params, masks, tx, algo)
    epoch = dst.train_epoch_fn(dst.make_train_step(dst.flax_apply(model), tx, algo), 32)
    union = jax.tree_util.tree_map(np.asarray, masks)
    for e in range(2):
        state, _ = epoch(state, x, y, jax.random.key(e))
        union = jax.tree_util.tree_map(lambda u, m: u | np.asarray(m), union, state.masks)
    for a, b, m in zip(jax.tree_util.tree_leaves(state.ever_active), jax.tree_util.tree_leaves(union),
                       jax.tree_util.tree_leaves(state.masks)):
        assert (np.asarray(a) >= np.asarray(m)).all() and (np.asarray(a) >= b).all()
    k = named_leaves(state.ever_active)["Dense_0/kernel"]
    assert k.sum() > named_leaves(masks)["Dense_0/kernel"].sum()


def test_evaluate_counts_every_example_once(tiny_mlp):
    model, params = tiny_mlp
    x = jax.random.normal(jax.random.key(0), (1234, 64))
    logits = model.apply({"params": params}, x)
    y = jnp.argmax(logits, -1).at[:34].set((jnp.argmax(logits[:34], -1) + 1) % 10)
    out = dst.evaluate_fn(dst.flax_apply(model), batch_size=500)(params, {}, x, y)
    assert float(out["accuracy"]) == pytest.approx(1200 / 1234)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    assert float(out["loss"]) == pytest.approx(float(ref), rel=1e-5)


def _check_quiet_path(name, updates, exact):
    # The epoch that leaves out quiet `update` calls must be the scan of the full step, bit for bit:
    # params, masks, optimizer state, ITOP, and every per-step metric on the same row (an update
    # on the epoch's last step included).
    model, params, x, y = tiny_problem()
    algo = make_algorithm(name, update_every=3, start_step=1, end_step=20)
    tx = optax.adam(1e-2)
    step = dst.make_train_step(dst.flax_apply(model), tx, algo)
    assert step.has_quiet_path
    fast = dst.train_epoch_fn(step, 32)
    scan = dst.train_epoch_fn(step.full, 32)   # a plain function: the scan of the full step
    a = b = dst.create_train_state(jax.random.key(0), params, initial_masks(name, params), tx, algo)
    # 8 steps an epoch; updates at 1, 4, 7 (an epoch's last step), 10, 13, 16, 19 (pruning: and 20).
    for e, count in enumerate(updates):
        (a, ma), (b, mb) = fast(a, x, y, jax.random.key(e)), scan(b, x, y, jax.random.key(e))
        np.testing.assert_array_equal(jax.random.key_data(a.rng), jax.random.key_data(b.rng))
        for u, v in zip(jax.tree_util.tree_leaves((a._replace(rng=0), ma)),
                        jax.tree_util.tree_leaves((b._replace(rng=0), mb))):
            u, v = np.asarray(u), np.asarray(v)
            if exact or not np.issubdtype(u.dtype, np.floating):
                np.testing.assert_array_equal(u, v)
            else:   # the suite's faster emitters round some fused float expressions apart (compile_flags)
                np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)
        assert int(ma["updated"].sum()) == count
    assert int(a.step) == 24


# RigL (a constant count) and GMP (a pruning schedule that updates at end_step too) in `make test`: masks,
# counts and ITOP bit for bit, floats to rounding where the suite compiles with its faster emitters; bit
# for bit as users' runs compile in `make test-slow` (next test).
@pytest.mark.parametrize("name,updates", [
    pytest.param("set", [3, 2, 2], marks=pytest.mark.slow), ("rigl", [3, 2, 2]),
    pytest.param("mest", [3, 2, 2], marks=pytest.mark.slow), ("gmp", [3, 2, 3]),
    pytest.param("granet", [3, 2, 3], marks=pytest.mark.slow)])
def test_quiet_path_epoch_equals_the_plain_scan(name, updates):
    # Bit for bit is a property of XLA's CPU code: on an H100 the two programs' floats differed by 1.5e-8
    # (docs/backends.md, "On a GPU"), their masks and counts not at all.
    _check_quiet_path(name, updates, exact=uses_default_emitters() and jax.default_backend() == "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name,updates", [("rigl", [3, 2, 2]), ("gmp", [3, 2, 3])])
@with_default_emitters
def test_quiet_path_epoch_equals_the_plain_scan_bit_for_bit_as_users_compile(name, updates):
    _check_quiet_path(name, updates, exact=True)


@pytest.mark.parametrize("name", ["rigl", "static"])
def test_host_loop_epoch_matches_the_scanned_epoch(name):
    # One dispatch per step (conv nets on CPU) must train the same run: same masks and topology
    # counts exactly, params equal up to float reassociation between two compilations.
    model, params, x, y = tiny_problem()
    algo = make_algorithm(name, update_every=3, end_step=20)
    tx = optax.sgd(0.05, momentum=0.9)
    step = dst.make_train_step(dst.flax_apply(model), tx, algo)
    scan, host = dst.train_epoch_fn(step, 32), dst.train_epoch_fn(step, 32, loop="host")
    a = b = dst.create_train_state(jax.random.key(0), params, initial_masks(name, params), tx, algo)
    for e in range(2):
        (a, ma), (b, mb) = scan(a, x, y, jax.random.key(e)), host(b, x, y, jax.random.key(e))
        for u, v in zip(jax.tree_util.tree_leaves((a.masks, a.ever_active, ma["updated"], ma["grown"])),
                        jax.tree_util.tree_leaves((b.masks, b.ever_active, mb["updated"], mb["grown"]))):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        for u, v in zip(jax.tree_util.tree_leaves((a.params, ma["loss"])),
                        jax.tree_util.tree_leaves((b.params, mb["loss"]))):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
    assert int(a.step) == int(b.step) == 16


def test_augmentation_runs_inside_the_epoch_from_the_epochs_key():
    seen = []
    model, params, _, y = tiny_problem()
    x = jax.random.normal(jax.random.key(5), (256, 8, 8))   # images: the MLP flattens them

    def augment(key, images):
        flipped = images[:, :, ::-1]
        return jnp.where(jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1)), flipped, images)

    algo = make_algorithm("static")
    tx = optax.sgd(0.05)
    step = dst.make_train_step(dst.flax_apply(model), tx, algo)
    start = dst.create_train_state(jax.random.key(0), params, initial_masks("static", params), tx, algo)
    plain = dst.train_epoch_fn(step, 32)(start, x, y, jax.random.key(1))[0]
    for loop in ("scan", "host"):
        epoch = dst.train_epoch_fn(step, 32, augment=augment, loop=loop)
        one = epoch(start, x, y, jax.random.key(1))[0]
        again = epoch(start, x, y, jax.random.key(1))[0]
        other = epoch(start, x, y, jax.random.key(2))[0]
        seen.append(one)
        k = lambda s: np.asarray(named_leaves(s.params)["Dense_0/kernel"])
        np.testing.assert_array_equal(k(one), k(again))              # same key, same augmentation
        assert not np.allclose(k(one), k(plain)) and not np.allclose(k(one), k(other))
    np.testing.assert_allclose(*(np.asarray(named_leaves(s.params)["Dense_0/kernel"]) for s in seen),
                               rtol=1e-5, atol=1e-6)          # the host loop draws the same keys
