"""experiments.cfconv_channels: its rank measure, its binary digits task and its paired summary."""

from __future__ import annotations

import pytest
import torch

from experiments import cfconv_channels as exp


def test_effective_rank_counts_distinct_output_channels():
    eye = torch.eye(4, dtype=torch.complex128).reshape(4, 4, 1, 1)  # output channel o reads input o only
    assert exp.effective_rank(eye) == pytest.approx(4.0)
    same = torch.ones(4, 3, 2, 2, dtype=torch.complex128)  # every output channel the same sum of the inputs
    assert exp.effective_rank(same) == pytest.approx(1.0)
    two = torch.zeros(4, 1, 1, 2, dtype=torch.complex128)
    two[:2, 0, 0, 0], two[2:, 0, 0, 1] = 1, 1j  # two directions, equal weight
    assert exp.effective_rank(two) == pytest.approx(2.0)


def test_the_binary_task_is_the_digits_split_with_labels_5_to_9_as_one():
    from nas_flex.data import get_dataset, unregister

    exp._register_binary()
    exp._register_binary()  # a second registration is a no-op
    try:
        binary, digits = get_dataset(exp.BINARY_DATASET, seed=3), get_dataset("digits", seed=3)
    finally:
        unregister(exp.BINARY_DATASET)
    assert binary.num_classes == 2 and binary.input_shape == digits.input_shape
    for b, d in ((binary.train, digits.train), (binary.val, digits.val)):
        assert torch.equal(b.inputs, d.inputs)
        assert torch.equal(b.targets, (d.targets >= 5).long())
    share = float(binary.train.targets.float().mean())
    assert 0.45 < share < 0.55  # balanced: five digits on each side


def test_summary_pairs_each_variant_with_per_pair_by_seed():
    def row(variant: str, seed: int, acc: float) -> dict:
        return {"regime": "a", "variant": variant, "seed": seed, "config": {"epochs": 1}, "status": "completed",
                "val_acc": acc, "rank_state": [2.0, 4.0], "rank_mlp": [1.0, 3.0], "wall_seconds": 1.0}

    rows = [row("per_pair", 0, 0.8), row("per_pair", 1, 0.6), row("onehot", 1, 0.7), row("onehot", 0, 0.7)]
    block = exp.summarise(rows)["a"]["variants"]
    assert block["per_pair"]["minus_per_pair"] is None
    diff = block["onehot"]["minus_per_pair"]
    assert diff["mean"] == pytest.approx(0.0) and diff["sd"] == pytest.approx(0.1 * 2**0.5)  # -0.1 and +0.1
    assert block["onehot"]["val_acc_stats"]["mean"] == pytest.approx(0.7)
    assert block["onehot"]["rank_mlp"] == [1.0, 3.0]
