"""The compiled sparse kernels (dst.kernels): built by this install, and equal to dense products.

Every expectation is a dense numpy product of the same weights (W with zeros off the sparsity pattern):
forward ``x @ W``, input gradient ``dy @ W.T``, and the weight gradient ``x.T @ dy`` read at the stored
positions. Patterns include empty output units, empty input rows, a batch of one and leading batch dims.
"""

import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dst import kernels


def random_csr(rng, n_in, n_out, density, *, empty_rows=(), empty_cols=()):
    """A random W [n_in, n_out] and its CSR over output units (values, cols, rowptr)."""
    mask = rng.random((n_in, n_out)) < density
    mask[list(empty_rows), :] = False      # inputs that feed nothing
    mask[:, list(empty_cols)] = False      # output units with no inputs
    w = np.where(mask, rng.normal(size=mask.shape), 0.0).astype(np.float32)
    o_idx, i_idx = np.nonzero(mask.T)      # row-major over output units: CSR order
    rowptr = np.concatenate([[0], np.cumsum(mask.sum(0))]).astype(np.int32)
    return w, w[i_idx, o_idx], i_idx.astype(np.int32), rowptr, (i_idx, o_idx)


def test_kernels_are_built_by_the_install():
    """A fresh clone's install compiles them (CMakeLists.txt); a missing build must fail CI, not skip."""
    assert kernels.available(), kernels.status()
    assert "OpenMP threads" in kernels.status()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction sets")
def test_every_instruction_set_this_cpu_has_is_built_and_the_best_is_chosen():
    """Not -march=native: the install builds AVX-512, AVX2 and portable loops, and picks the best the CPU runs."""
    flags = _cpu_flags()
    expected = (["avx512"] if "avx512f" in flags else []) + (["avx2"] if {"avx2", "fma"} <= flags else []) + ["generic"]
    assert list(kernels.runnable_isas()) == expected
    if not os.environ.get(kernels.ISA_VARIABLE):
        assert kernels.isa() == expected[0]
        assert f"{expected[0]} instructions" in kernels.status()


def test_the_environment_variable_forces_a_lower_instruction_set_and_names_the_allowed_ones():
    code = "import dst.kernels as k; print(k.isa() if k.available() else k.status())"
    run = lambda value: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       env={**os.environ, kernels.ISA_VARIABLE: value}).stdout.strip()
    assert run("generic") == "generic"
    said = run("sse9")
    assert said == f"{kernels.ISA_VARIABLE}=sse9 is not an instruction set this CPU and build run; allowed: " \
                   + ", ".join(kernels.runnable_isas())
    with pytest.raises(ValueError, match="allowed: "):
        kernels.use_isa("sse9")


# 61: AVX2's 32-float chunk, then 16, 8 and a rest; 130 and 200: AVX-512's 128-float chunk, then 64 or 8 and a rest
@pytest.mark.parametrize("batch_shape", [(1,), (7,), (2, 3), (61,), (130,), (200,)])
def test_csr_forward_and_gradients_equal_the_dense_product(batch_shape, isa):
    rng = np.random.default_rng(len(batch_shape) * 10 + batch_shape[-1])
    n_in, n_out = 41, 19
    w, values, cols, rowptr, (i_idx, o_idx) = random_csr(rng, n_in, n_out, 0.2, empty_rows=(0, 5),
                                                        empty_cols=(3, 18))
    x = rng.normal(size=(*batch_shape, n_in)).astype(np.float32)
    dy = rng.normal(size=(*batch_shape, n_out)).astype(np.float32)

    y, vjp = jax.vjp(lambda v, x: kernels.csr_matmul(x, v, cols, rowptr), values, x)
    dvalues, dx = vjp(jnp.asarray(dy))

    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dy @ w.T, rtol=1e-5, atol=1e-5)
    x2, dy2 = x.reshape(-1, n_in), dy.reshape(-1, n_out)
    np.testing.assert_allclose(dvalues, (x2.T @ dy2)[i_idx, o_idx], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_forward_pass_over_blocks_of_inputs_equals_the_dense_product(shuffle, isa):
    """Activations over 1.5 MB take the forward product in 1 MB blocks of inputs (Spmm's cursors): here
    3200 inputs at batch 130 (two blocks, the batch's rest included), with each row's inputs in CSR order
    or shuffled (the blocks are a matter of speed, not of correctness, whatever the order)."""
    rng = np.random.default_rng(3)
    n_in, n_out, batch = 3200, 48, 130       # 0.05 * 3200: about 160 inputs per row, long enough to block
    w, values, cols, rowptr, _ = random_csr(rng, n_in, n_out, 0.05, empty_rows=(7,), empty_cols=(2,))
    if shuffle:
        order = np.concatenate([rng.permutation(np.arange(a, b)) for a, b in zip(rowptr[:-1], rowptr[1:])])
        values, cols = values[order], cols[order]
    x = rng.normal(size=(batch, n_in)).astype(np.float32)
    np.testing.assert_allclose(kernels.csr_matmul(x, values, cols, rowptr), x @ w, rtol=1e-4, atol=1e-4)


def test_a_batch_of_one_takes_the_matrix_vector_kernel_and_equals_the_dense_product(isa):
    """Rows of 0 to about 150 nonzeros: the gathers in pairs of 8 lanes, a single 8, and the rest."""
    rng = np.random.default_rng(11)
    n_in, n_out = 300, 40
    densities = np.linspace(0.0, 0.5, n_out)                  # a different fan-in for every output unit
    mask = rng.random((n_in, n_out)) < densities
    w = np.where(mask, rng.normal(size=mask.shape), 0.0).astype(np.float32)
    o_idx, i_idx = np.nonzero(mask.T)
    rowptr = np.concatenate([[0], np.cumsum(mask.sum(0))]).astype(np.int32)
    x = rng.normal(size=(1, n_in)).astype(np.float32)
    y = kernels.csr_matmul(x, w[i_idx, o_idx], i_idx.astype(np.int32), rowptr)
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7, 61, 130, 200])   # whole register blocks of each ISA, smaller ones, a rest
def test_the_fused_and_the_separate_backward_kernels_equal_the_dense_product(batch, isa):
    """dx and dW in one pass over the transposed structure (dst_spmm_t_sddmm), and in two (dst_spmm_t,
    dst_sddmm): the handlers called directly, so both loops are tested whichever dst_backward picks."""
    from dst.kernels import ops

    kernels.register()
    rng = np.random.default_rng(batch)
    n_in, n_out = 37, 23
    w, values, cols, rowptr, (i_idx, o_idx) = random_csr(rng, n_in, n_out, 0.25, empty_rows=(1,), empty_cols=(4,))
    x = rng.normal(size=(batch, n_in)).astype(np.float32)
    dy = rng.normal(size=(batch, n_out)).astype(np.float32)
    t = ops.transpose(jnp.asarray(cols), jnp.asarray(rowptr), n_in)
    xT, dyT = jnp.asarray(x.T.copy()), jnp.asarray(dy.T.copy())
    shapes = (jax.ShapeDtypeStruct(xT.shape, jnp.float32), jax.ShapeDtypeStruct(values.shape, jnp.float32))
    fused = jax.ffi.ffi_call("dst_spmm_t_sddmm", shapes)(values, *t, dyT, xT)
    separate = (jax.ffi.ffi_call("dst_spmm_t", shapes[0])(values, *t, dyT),
                jax.ffi.ffi_call("dst_sddmm", shapes[1])(cols, rowptr, dyT, xT))
    for dxT, dvalues in (fused, separate):
        np.testing.assert_allclose(dxT.T, dy @ w.T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dvalues, (x.T @ dy)[i_idx, o_idx], rtol=1e-5, atol=1e-4)


def test_the_backward_pass_computes_dx_only_where_the_input_is_differentiated(isa):
    """A hidden layer takes dst_backward (both gradients); a layer fed by data, dst_sddmm alone."""
    rng = np.random.default_rng(5)
    n_in, n_out = 37, 23
    w, values, cols, rowptr, (i_idx, o_idx) = random_csr(rng, n_in, n_out, 0.25, empty_rows=(1,), empty_cols=(4,))
    x = rng.normal(size=(9, n_in)).astype(np.float32)
    dy = rng.normal(size=(9, n_out)).astype(np.float32)
    loss = lambda v, x: jnp.sum(kernels.csr_matmul(x, v, cols, rowptr) * dy)
    both, values_only = jax.jit(jax.grad(loss, (0, 1))), jax.jit(jax.grad(loss))
    assert "dst_backward" in both.lower(values, x).as_text()
    assert "dst_backward" not in values_only.lower(values, x).as_text()
    dvalues, dx = both(values, x)
    np.testing.assert_allclose(dx, dy @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dvalues, (x.T @ dy)[i_idx, o_idx], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(values_only(values, x), dvalues, rtol=1e-6, atol=1e-6)


def test_the_fused_backward_is_chosen_per_instruction_set(isa):
    """The measured rule (sparse_matmul.cc, FusedBackwardPays): never below 1 MB of activations; above, with
    AVX-512's 32 registers unless a layer inside L2 holds over 2M weights, with 16 for sparse layers only."""
    pays = kernels.fused_backward_pays
    assert not pays(n_in=300, nnz=9_000, batch=128)                          # LeNet-300-100: in the caches
    assert pays(n_in=333_334, nnz=13_333_360, batch=128)                     # the million-neuron SET-MLP
    assert pays(n_in=4000, nnz=160_000, batch=128)                           # 4000 wide at 1%: 40 per input
    assert pays(n_in=4000, nnz=1_600_000, batch=128) == (isa == "avx512")    # at 10%: 400 per input
    assert not pays(n_in=4000, nnz=4_800_000, batch=128)                     # at 30%, inside L2
    assert pays(n_in=8000, nnz=6_400_000, batch=128) == (isa == "avx512")    # at 10%, beyond L2


def test_the_kernels_run_in_the_program_and_match_the_xla_fallback_under_jit_and_vmap():
    rng = np.random.default_rng(1)
    w, values, cols, rowptr, _ = random_csr(rng, 64, 32, 0.1)
    x = jnp.asarray(rng.normal(size=(3, 16, 64)), jnp.float32)   # vmapped over 3 replicas

    def loss(fn, v, x):
        return jnp.sum(jnp.tanh(fn(x, v, cols, rowptr)) ** 2)

    kernel = jax.jit(jax.vmap(jax.grad(lambda v, x: loss(kernels.csr_matmul, v, x), (0, 1)), (None, 0)))
    fallback = jax.vmap(jax.grad(lambda v, x: loss(kernels.csr_matmul_xla, v, x), (0, 1)), (None, 0))
    for a, b in zip(kernel(values, x), fallback(values, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    hlo = jax.jit(jax.grad(lambda v, x: loss(kernels.csr_matmul, v, x), (0, 1))).lower(values, x[0]).as_text()
    for target in ("dst_spmm", "dst_backward"):
        assert target in hlo


def test_condensed_layer_equals_dense_and_the_gather_path():
    rng = np.random.default_rng(2)
    n_in, n_out, k = 30, 12, 4
    indices = np.stack([rng.choice(n_in, k, replace=False) for _ in range(n_out)]).astype(np.int32)
    values = rng.normal(size=(n_out, k)).astype(np.float32)
    w = np.zeros((n_in, n_out), np.float32)
    w[indices, np.arange(n_out)[:, None]] = values
    x = rng.normal(size=(5, n_in)).astype(np.float32)
    dy = rng.normal(size=(5, n_out)).astype(np.float32)

    y, vjp = jax.vjp(lambda v, x: kernels.condensed_matmul(x, v, indices), values, x)
    dvalues, dx = vjp(jnp.asarray(dy))
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernels.condensed_matmul_gather(x, values, indices), x @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dy @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dvalues, (x.T @ dy)[indices, np.arange(n_out)[:, None]], rtol=1e-5, atol=1e-5)


def test_a_layer_with_no_stored_weights_outputs_zeros():
    x = jnp.ones((4, 6))
    empty = jnp.zeros((0,), jnp.int32)
    y, vjp = jax.vjp(lambda x: kernels.csr_matmul(x, jnp.zeros((0,)), empty, jnp.zeros((4,), jnp.int32)), x)
    np.testing.assert_array_equal(y, np.zeros((4, 3)))
    np.testing.assert_array_equal(vjp(jnp.ones((4, 3)))[0], np.zeros((4, 6)))


def test_a_malformed_structure_is_an_error_not_a_wrong_answer():
    x = jnp.ones((2, 5))
    with pytest.raises(Exception, match="rowptr|values"):
        jax.block_until_ready(kernels.csr_matmul(x, jnp.ones((3,)), jnp.zeros((2,), jnp.int32),
                                                 jnp.array([0, 3], jnp.int32)))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bad", [40, -1])
@pytest.mark.parametrize("at", [0, 17, 45])   # in the gathers' pairs of 8, a single 8, or the rest
def test_an_input_index_out_of_range_is_an_error_on_every_path(batch, bad, at, isa):
    """The batch of one checks each index as its gather reads it; larger batches check all first."""
    n_in, per_row = 40, 46
    cols = np.tile(np.arange(per_row) % n_in, 2).astype(np.int32)
    cols[at] = bad
    rowptr = np.array([0, per_row, 2 * per_row], np.int32)
    x = jnp.ones((batch, n_in))
    with pytest.raises(Exception, match=r"cols must lie in \[0, n_in\)"):
        jax.block_until_ready(kernels.csr_matmul(x, jnp.ones((2 * per_row,)), cols, rowptr))


@pytest.mark.parametrize("size", [1, 37, 300, 2000])
def test_compact_lists_the_true_positions_in_order_as_nonzero_does(size, monkeypatch):
    mask = jax.random.uniform(jax.random.key(0), (1000,)) < 0.3
    want = np.flatnonzero(np.asarray(mask))
    expected = np.zeros(size, np.int32)
    expected[:min(size, want.size)] = want[:size]
    index, count = jax.jit(lambda m: kernels.compact(m, size))(mask)
    np.testing.assert_array_equal(index, expected)
    assert int(count) == want.size
    monkeypatch.setattr(kernels.ops, "use_kernels", lambda: False)   # the XLA fallback says the same
    index, count = jax.jit(lambda m: kernels.compact(m, size))(mask)
    np.testing.assert_array_equal(index, expected)
    assert int(count) == want.size


@pytest.mark.parametrize("use_kernels", [True, False], ids=["kernels", "xla"])
@pytest.mark.parametrize("capacity", [0, 50, 61, 90], ids=lambda c: f"capacity{c}")
def test_slots_by_unit_store_a_dense_mask_in_csr_order_and_read_arrays_there(capacity, use_kernels, monkeypatch):
    """By definition: the true entries ordered by (unit, input), the first `capacity` of them kept (61 is the
    mask's count: no padding; 50 cuts a unit's entries short), padding after them (input 0, value 0)."""
    monkeypatch.setattr(kernels.ops, "use_kernels", lambda: use_kernels and kernels.available())
    rng = np.random.default_rng(8)
    n_in, n_out = 23, 17
    mask = rng.random((n_in, n_out)) < 0.15
    mask[:, 4] = False                                   # an empty unit, and a full one
    mask[:, 9] = True
    units, inputs = np.nonzero(mask.T)                   # (unit, input) ascending
    kept = min(capacity, units.size)
    per_unit = np.bincount(units, minlength=n_out)
    rowptr = np.minimum(np.concatenate([[0], np.cumsum(per_unit)[:-1]]), capacity)
    cols, got_rowptr, count = jax.jit(lambda m: kernels.slots_by_unit(m, capacity))(mask)
    np.testing.assert_array_equal(cols, np.concatenate([inputs[:kept], np.zeros(capacity - kept, int)]))
    np.testing.assert_array_equal(got_rowptr, np.concatenate([rowptr, [capacity]]))
    assert int(count) == units.size
    for x in (rng.normal(size=(n_in, n_out)).astype(np.float32), rng.random((n_in, n_out)) < 0.5,
              rng.integers(-9, 9, (n_in, n_out)).astype(np.int32)):
        got = jax.jit(kernels.gather_by_unit)(x, mask, cols, got_rowptr, count)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, np.concatenate([x[inputs[:kept], units[:kept]],
                                                           np.zeros(capacity - kept, x.dtype)]))


def _top_k_by_definition(keys, priorities, k):
    """The min(k, eligible) elements of largest (key, priority), keys of 0 ineligible: one sort."""
    eligible = np.flatnonzero(keys > 0)
    order = eligible[np.lexsort((priorities[eligible], keys[eligible]))[::-1]]   # descending (key, priority)
    chosen = np.zeros(keys.size, bool)
    chosen[order[:max(k, 0)]] = True
    return chosen


@pytest.mark.parametrize("case", ["spread", "one_bin", "all_equal", "large", "sampled", "sampled_ties", "misled"])
def test_top_k_of_keys_takes_the_largest_by_key_then_priority(case, monkeypatch):
    """Small arrays take the histogram way; from 2^18 elements a sample brackets the k-th key first (with
    many ties at it, or all equal keys, it cannot, and the histogram way decides)."""
    rng = np.random.default_rng(3)
    n = {"large": 70_000, "sampled": 300_000, "sampled_ties": 300_000, "misled": 300_000}.get(case, 3000)
    if case == "one_bin":       # every key shares its top 16 bits: the exact ranking decides all
        keys = (np.uint32(0x3F80) << 16) + rng.integers(0, 50, n).astype(np.uint32)
    elif case == "sampled_ties":   # few distinct keys: the bracket holds whole tied groups
        keys = rng.integers(1, 30, n).astype(np.uint32)
    elif case == "misled":         # the strided sample sees only the lowest key: its bracket misses the k-th
        keys = rng.integers(1000, 2000, n).astype(np.uint32)
        keys[::n // 2**16] = 1
    elif case == "all_equal":   # the priorities alone decide
        keys = np.full(n, 7, np.uint32)
    else:                       # floats' keys, with repeats, across many bins
        keys = np.asarray(kernels.ops.selection.score_keys(jnp.asarray(rng.normal(size=n).round(2), jnp.float32)))
    keys = np.where(rng.random(n) < 0.2, np.uint32(0), keys).astype(np.uint32)   # ineligible ones
    priorities = rng.choice(2**32, n, replace=False).astype(np.uint32)   # unique, as dst's are
    eligible = int(np.sum(keys > 0))
    select = jax.jit(lambda keys, k: kernels.top_k_of_keys(keys, k, lambda: jnp.asarray(priorities)))
    for k in (-1, 0, 1, 9, eligible // 3, eligible - 1, eligible, eligible + 5):
        want = _top_k_by_definition(keys, priorities, k)
        np.testing.assert_array_equal(select(keys, k), want, err_msg=f"k={k}")
        xla = kernels.ops.selection.top_k_of_keys(jnp.asarray(keys), k, lambda: jnp.asarray(priorities))
        np.testing.assert_array_equal(xla, want, err_msg=f"XLA, k={k}")
    monkeypatch.setattr(kernels.ops, "use_kernels", lambda: False)   # the fallback is the XLA selection
    fallback = jax.jit(lambda keys: kernels.top_k_of_keys(keys, 9, lambda: jnp.asarray(priorities)))
    np.testing.assert_array_equal(fallback(keys), _top_k_by_definition(keys, priorities, 9))


@pytest.mark.parametrize("at_positions", [False, True], ids=["flat_index", "positions"])
def test_top_k_of_hashed_priorities_breaks_ties_as_the_priority_array_does(at_positions):
    """dst_top_k_hashed hashes the ranked elements' positions in C++: the same choice as ranking by the whole
    array of dst.selection.priorities_at."""
    rng = np.random.default_rng(4)
    n = 50_000
    keys = jnp.asarray(np.where(rng.random(n) < 0.1, 0, rng.integers(1, 40, n)).astype(np.uint32))  # many ties
    positions = jnp.asarray(rng.choice(10 * n, n, replace=False).astype(np.int32)) if at_positions else None
    hashed = kernels.ops.selection.Priorities(jax.random.key(7), positions, n)
    for k in (1, 333, 20_000, 44_000):
        want = _top_k_by_definition(np.asarray(keys), np.asarray(hashed()), k)
        np.testing.assert_array_equal(jax.jit(lambda keys, k: kernels.top_k_of_keys(keys, k, hashed))(keys, k), want,
                                      err_msg=f"k={k}")


@pytest.mark.parametrize("n", [3000, 300_000], ids=["histogram", "sampled"])
def test_a_tiebreak_settles_repeated_priorities_exactly(n):
    """A layer of 2^32+ positions wraps its flat positions to 32 bits, so two weights can share a priority;
    their inputs (the tiebreak) keep the ranking total: exactly k chosen, the largest by (key, priority, input)."""
    rng = np.random.default_rng(9)
    keys = rng.integers(1, 4, n).astype(np.uint32)                      # few keys: ties everywhere
    positions = rng.integers(0, n // 4, n).astype(np.int32)             # each priority about four times
    inputs = rng.permutation(n).astype(np.int32)                        # (position, input) pairs unique
    hashed = kernels.ops.selection.Priorities(jax.random.key(3), jnp.asarray(positions), n, jnp.asarray(inputs))
    prio = np.asarray(hashed()).astype(np.uint64)
    order = np.lexsort((inputs, prio, keys))[::-1]                      # descending (key, priority, input)
    for k in (1, 77, n // 3, n - 5):
        want = np.zeros(n, bool)
        want[order[:k]] = True
        got = jax.jit(lambda keys, k: kernels.top_k_of_keys(keys, k, hashed))(jnp.asarray(keys), k)
        np.testing.assert_array_equal(got, want, err_msg=f"k={k}")


@pytest.mark.parametrize("use_kernels", [True, False], ids=["kernels", "xla"])
def test_transpose_lists_each_inputs_slots_in_order_with_their_units(use_kernels, monkeypatch):
    monkeypatch.setattr(kernels.ops, "use_kernels", lambda: use_kernels and kernels.available())
    rng = np.random.default_rng(5)
    n_in, n_out = 40, 30
    _, _, cols, rowptr, (inputs, units) = random_csr(rng, n_in, n_out, 0.2, empty_rows=(0, 7), empty_cols=(3,))
    pad = 5                       # padding slots past rowptr[n_out], at input 0, as a stored layer has them
    cols = np.concatenate([cols, np.zeros(pad, np.int32)])
    units = np.concatenate([units, np.full(pad, n_out)])
    got = jax.jit(lambda c, r: kernels.transpose(c, r, n_in))(cols, rowptr)
    # By definition: input i's slots in slot order, each with its output unit.
    slots = [s for i in range(n_in) for s in range(cols.size) if cols[s] == i]
    np.testing.assert_array_equal(got.slots, slots)
    np.testing.assert_array_equal(got.rows, units[slots])
    np.testing.assert_array_equal(got.rowptr, np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n_in))]))


@pytest.mark.parametrize("use_kernels", [True, False], ids=["kernels", "xla"])
def test_merge_slots_interleaves_kept_and_grown_weights_in_csr_order(use_kernels, monkeypatch):
    monkeypatch.setattr(kernels.ops, "use_kernels", lambda: use_kernels and kernels.available())
    rng = np.random.default_rng(6)
    n_in, n_out, capacity = 12, 9, 40
    positions = rng.choice(n_in * n_out, capacity - 4, replace=False)   # distinct (unit, input) pairs
    a_pos, b_pos = np.sort(positions[:25]), np.sort(positions[25:])     # by unit * n_in + input: CSR order
    pad = lambda a, fill: np.concatenate([a, np.full(capacity - a.size, fill)]).astype(np.int32)
    a_cols, a_units = pad(a_pos % n_in, 0), pad(a_pos // n_in, n_out)
    a_live = pad(rng.random(25) < 0.7, 0).astype(bool)                   # holes among the kept
    b_cols, b_units = pad(b_pos % n_in, 0), pad(b_pos // n_in, 0)
    b_live = np.arange(capacity) < b_pos.size                            # a live prefix
    got = jax.jit(lambda *a: kernels.merge_slots(*a, n_in, n_out))(a_cols, a_units, a_live, b_cols, b_units, b_live)
    live = sorted([(a_units[i], a_cols[i], i) for i in range(capacity) if a_live[i]] +
                  [(b_units[j], b_cols[j], -1) for j in range(capacity) if b_live[j]])
    count = len(live)
    np.testing.assert_array_equal(got.units, [u for u, _, _ in live] + [n_out] * (capacity - count))
    np.testing.assert_array_equal(got.cols, [c for _, c, _ in live] + [0] * (capacity - count))
    np.testing.assert_array_equal(got.source, [s for _, _, s in live] + [-1] * (capacity - count))
    unit_of = np.array([u for u, _, _ in live])
    np.testing.assert_array_equal(got.rowptr, [np.sum(unit_of < o) for o in range(n_out)] + [capacity])
