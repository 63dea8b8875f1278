"""Sequences: the 1-D path. A causal TCN on the digits read as pixel sequences, its kernel size searched over a grid
(plain causal convolutions of 3, 5, 7 or 9 taps) against FlexConv's 1-D form, which learns its own length.

Export turns every trial into plain causal ``nn.Conv1d`` layers (TorchScript, torch.export, ONNX); discretise is for
the 2-D backbones only. The other learned-size layers have no 1-D form, so this space compares the grid with FlexConv.
"""

SAMPLER = "grid"
REPEATS = 1

BASE = {"backbone": "tcn", "dataset": "digits-seq", "width": 16, "depth": 3, "epochs": 6, "batch_size": 64,
        "lr": 3e-3}


def space(trial):
    conv = trial.suggest_categorical("conv", ["conv", "flexconv"])
    config = {**BASE, "conv": conv}
    if conv == "conv":
        config["kernel_size"] = trial.suggest_categorical("kernel_size", [3, 5, 7, 9])
    return config
