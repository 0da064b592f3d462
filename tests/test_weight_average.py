"""The moving average of weights that training validates and stores."""

from pathlib import Path

import pytest
import torch
from torch import nn

from inspector.store import ModelStore
from inspector.training import fit
from inspector.weight_average import WeightAverage
from tests.conftest import tiny_config


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_update_moves_the_average_part_of_the_way_with_a_ramped_decay() -> None:
    net = small_net()
    average = WeightAverage(net, decay=0.9)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()(torch.randn(8, 3))  # batch norm: running stats and num_batches_tracked move
    average.update(net)
    # Step 1 decays by min(0.9, 2 / 11): most of the way to the new weights.
    decay = 2 / 11
    expected = start + (1 - decay) * (net[0].weight.detach() - start)
    assert torch.allclose(average.module[0].weight, expected)
    assert int(average.module[1].num_batches_tracked) == 1  # integers are copied
    assert all(not p.requires_grad for p in average.module.parameters())
    assert not torch.equal(average.module[0].weight, net[0].weight)  # a copy, not the same


def test_the_average_settles_on_weights_that_stop_moving() -> None:
    net = small_net()
    average = WeightAverage.over_epochs(net, epochs=2, steps_per_epoch=5)
    assert average.decay == pytest.approx(0.9)
    with torch.no_grad():
        net[0].weight.fill_(3.0)
    for _ in range(200):
        average.update(net)
    assert torch.allclose(average.module[0].weight, torch.full((4, 3), 3.0), atol=1e-6)
    restored = WeightAverage(small_net(), decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.steps == 200 and restored.decay == pytest.approx(0.9)
    assert torch.equal(restored.module[0].weight, average.module[0].weight)
    with pytest.raises(ValueError):
        WeightAverage(net, decay=1.0)


def test_training_stores_the_averaged_weights(tmp_path: Path, demo_dirs) -> None:
    train_dir, val_dir = demo_dirs
    ckpt = tmp_path / "checkpoint.pt"
    store = ModelStore(tmp_path / "store")
    mv = fit(
        train_dir,
        val_dir=val_dir,
        name="avg",
        store=store,
        weights_dir=tmp_path,
        config=tiny_config(epochs=1, average_epochs=0.5),
        checkpoint_path=ckpt,
    )
    saved = torch.load(ckpt, weights_only=True)
    stored = torch.load(mv.weights_path, weights_only=True)
    averaged, last = saved["average"]["module"], saved["model"]
    assert saved["average"]["steps"] > 1
    name = "head.weight"
    assert torch.equal(stored[name], averaged[name].cpu())  # one epoch: the best is its average
    assert not torch.equal(stored[name], last[name].cpu())
    assert mv.metadata.training["config"]["average_epochs"] == 0.5


def test_resuming_carries_the_average_on(tmp_path: Path, demo_dirs) -> None:
    train_dir, val_dir = demo_dirs
    ckpt = tmp_path / "checkpoint.pt"
    store = ModelStore(tmp_path / "store")
    for epochs, resume in ((1, False), (2, True)):
        fit(
            train_dir,
            val_dir=val_dir,
            name="avg",
            store=store,
            weights_dir=tmp_path,
            config=tiny_config(epochs=epochs, average_epochs=0.5),
            checkpoint_path=ckpt,
            resume=resume,
        )
        saved = torch.load(ckpt, weights_only=True)
        if epochs == 1:
            one_epoch = saved["average"]["steps"]
    # Epoch 2 continued the average of epoch 1 rather than starting a new one.
    assert saved["epoch"] == 2 and saved["average"]["steps"] == 2 * one_epoch
