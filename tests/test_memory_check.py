"""A model too large for its dense form is refused from its shapes (dst.app.memory), before any allocation."""

import pytest
from cli_helpers import dst_train_here
from idx_data import write_dataset

from dst.app import memory
from dst.app.validate import ConfigError

SHAPES = {"Dense_0/kernel": (784, 1000), "Dense_0/bias": (1000,), "Dense_1/kernel": (1000, 10)}


def test_a_model_within_the_budget_passes_and_one_beyond_names_its_largest_layer():
    weights = 784 * 1000 + 1000 + 1000 * 10
    memory.check_dense_fits(SHAPES, weights * memory.BYTES_PER_WEIGHT, "masked")      # exactly fits
    memory.check_dense_fits(SHAPES, None, "masked")                                    # no budget known
    with pytest.raises(ConfigError, match=r"^model: layer Dense_0/kernel is 784 x 1,000 = 784,000 weights "
                                          r"\(0\.0 GiB dense\).*on sparsity\.backend=masked; .*train it born sparse: "
                                          r"sparsity\.backend=csr"):
        memory.check_dense_fits(SHAPES, weights * memory.BYTES_PER_WEIGHT - 1, "masked")


def test_the_budget_is_known_here_and_below_the_machines_memory():
    budget = memory.available_bytes()
    assert budget is not None and 0 < budget


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist")


def refused(tmp_path, data_dir, *overrides):
    """dst-train's stderr lines and exit status, over a run directory that already holds a record."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    out = dst_train_here("model=mlp", "model.hidden=[150000,150000]", *overrides, f"dataset.data_dir={data_dir}",
                         f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n' and "Traceback" not in out.stderr
    return [line for line in out.stderr.splitlines() if line.strip()], out.returncode


def test_dst_train_refuses_a_150000_wide_masked_mlp_in_one_sentence_naming_the_born_sparse_way(tmp_path, data_dir):
    """The issue's case: it aborted in XLA with a C++ check (exit 134) after asking for about 90 GB."""
    lines, code = refused(tmp_path, data_dir, "sparsity=set")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: model: layer Dense_1/kernel is 150,000 x 150,000 = 22,500,000,000 weights")
    assert "born sparse: sparsity.backend=csr" in lines[0]


def test_born_sparse_it_still_holds_too_many_weights_at_90_percent(tmp_path, data_dir):
    """On csr the layers are born sparse, and at sparsity 0.9 they would still hold 2.25e9 weights."""
    lines, code = refused(tmp_path, data_dir, "sparsity=set", "sparsity.backend=csr", "sparsity.distribution=uniform")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: born sparse, layer Dense_1/kernel still holds 2,250,000,000 weights "
                               "(density 0.1)")
    assert lines[0].endswith("raise sparsity.sparsity or lower sparsity.epsilon.")
