"""The data-driven surrogate: it learns held-out responses, and a warm start keeps what it learned."""

from __future__ import annotations

import numpy as np
import torch

from models.trainable import TrainedVOne, train_core, trained_vone


def _data(n: int, seed: int) -> tuple[TrainedVOne, torch.Tensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    net = trained_vone(n_sites=3, image_size=32, channels=8, seed=0)
    images = torch.from_numpy(rng.uniform(0, 1, size=(n, 3, 32, 32))).float()
    with torch.no_grad():
        front = net.front(images)
    # Ground truth: each site reads a different, fixed mix of front-end channels, nonlinearly.
    w = rng.normal(size=(front.shape[1], 3))
    drive = front.mean(dim=(2, 3)).numpy() @ w
    y = np.tanh((drive - drive.mean(0)) / drive.std(0)) * 10 + 20
    families = np.arange(n) // 2  # pairs of images share a family
    return net, front, y, families


def test_training_predicts_held_out_families() -> None:
    net, front, y, families = _data(240, 0)
    report = train_core(net, front, y, families, max_epochs=150, seed=0)
    assert report.held_out.any() and not report.held_out.all()
    held = set(families[report.held_out])
    assert not held & set(families[~report.held_out])  # whole families are held out
    assert report.val_r > 0.7, report


def test_warm_start_resumes_from_yesterdays_weights() -> None:
    net, front, y, families = _data(240, 1)
    train_core(net, front, y, families, max_epochs=150, seed=0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    cold_net, _, _, _ = _data(240, 1)
    cold = train_core(cold_net, front, y, families, max_epochs=1, seed=1)
    warm_net, _, _, _ = _data(240, 1)
    warm = train_core(warm_net, front, y, families, init_state=state, max_epochs=1, seed=1)
    assert warm.warm_started and not cold.warm_started
    assert warm.val_r > cold.val_r + 0.2, (warm, cold)
    # A new site count keeps the shared core but not the old readout.
    bigger = trained_vone(n_sites=4, image_size=32, channels=8, seed=0)
    report = train_core(bigger, front, np.c_[y, y[:, 0]], families, init_state=state, max_epochs=1)
    assert report.warm_started and bigger.mask.shape == (4, 64)


def test_noise_training_still_learns_and_is_deterministic() -> None:
    """Feature noise changes the weights (it is applied) but not what the core can learn."""
    net, front, y, families = _data(240, 0)
    plain = train_core(net, front, y, families, max_epochs=40, seed=0)
    plain_w = {k: v.clone() for k, v in net.state_dict().items()}
    runs = []
    for _ in range(2):
        noisy_net = _data(240, 0)[0]
        report = train_core(noisy_net, front, y, families, max_epochs=40, seed=0, feature_noise=0.3)
        runs.append((report, {k: v.clone() for k, v in noisy_net.state_dict().items()}))
    (a, wa), (b, wb) = runs
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights
    assert any(not torch.equal(wa[k], plain_w[k]) for k in wa)
    assert a.val_r > 0.5 and plain.val_r > 0.5, (a, plain)
