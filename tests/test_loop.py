"""The run loop's sentences (dst.app.loop), on hand-made epoch metrics."""

import numpy as np

from dst.app.loop import non_finite


def test_a_non_finite_loss_names_its_step_and_epoch():
    loss = np.array([0.9, 0.8, np.nan, np.inf, 0.5])          # the epoch's 5 steps, ending at step 15
    sentence = non_finite({"loss": loss}, step=15, epoch=3, lr=0.1)
    assert sentence == ("train/loss became nan at step 12 (epoch 3); lower optimizer.lr (now 0.1) or check the "
                        "data.")


def test_among_replicas_it_names_the_replica_too():
    loss = np.array([[0.9, 0.8, 0.7], [0.9, np.inf, 0.6]])    # two replicas' 3 steps, ending at step 6
    sentence = non_finite({"loss": loss}, step=6, epoch=2, lr=0.05)
    assert sentence.startswith("train/loss became inf at step 4 (epoch 2) of replica 1; ")
