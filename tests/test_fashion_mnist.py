"""Real Fashion-MNIST runs (Debian's dataset-fashion-mnist; .ci/run and `make` install it)."""

import json

import numpy as np
import pytest
from cli_helpers import dst_train

from dst.data import DataNotFoundError
from dst.data import load
from dst.data import locate


def _have_fashion_mnist():
    try:
        locate("fashion_mnist")
        return True
    except DataNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not _have_fashion_mnist(),
                                reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")


def test_the_real_files_load_as_published():
    # Xiao et al. 2017: 60,000 training and 10,000 test images of 28x28, 6,000 / 1,000 per class.
    data = load("fashion_mnist", normalize="none", seed=None)
    assert data.train_x.shape == (60000, 28, 28) and data.test_x.shape == (10000, 28, 28)
    assert np.bincount(data.train_y).tolist() == [6000] * 10 and np.bincount(data.test_y).tolist() == [1000] * 10
    assert data.train_x.min() == 0 and data.train_x.max() == 255
    # The first training image is an ankle boot (label 9), as in the files' own order.
    assert data.train_y[0] == 9


@pytest.mark.slow   # one epoch of the real data in a dst-train process (19 s under xdist)
def test_one_epoch_rigl_erk90_lenet300_reaches_80_percent(tmp_path):
    out = dst_train("sparsity=rigl", "sparsity.sparsity=0.9", "model=lenet300", "dataset=fashion_mnist",
                    "trainer.epochs=1", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test/accuracy"] >= 0.80
    assert summary["sparsity/global"] == pytest.approx(0.9, abs=1e-4)


@pytest.mark.slow   # 10 epochs of the real data (40-45 s); the one-epoch run above stays in `make test`
def test_default_experiment_reaches_85_percent(tmp_path):
    """`dst-train` with no overrides: RigL, ERK 90%, LeNet-300-100, Fashion-MNIST, offline wandb."""
    out = dst_train(f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test/accuracy"] >= 0.85
    assert (tmp_path / "run" / "curves.png").is_file()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
