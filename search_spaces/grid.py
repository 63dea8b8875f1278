"""The discrete grid: every kernel size x pooling pair, trained as plain convolutions (exhaustive).

Copy this file to write your own space: define ``space(trial) -> trial config`` (keys: nas_flex.train.KEY_DOCS),
drawing choices with trial.suggest_categorical / suggest_int / suggest_float, and set SAMPLER ("grid", "tpe" or
"random"). A grid must use categorical (or stepped) choices only.
"""

SAMPLER = "grid"

BASE = {"backbone": "simple", "depth": 4, "width": 16, "dataset": "digits-multiscale", "epochs": 8, "lr": 1e-2}


def space(trial):
    return {
        **BASE,
        "conv": "conv",
        "kernel_size": trial.suggest_categorical("kernel_size", [3, 5, 7]),
        "pooling": trial.suggest_categorical("pooling", ["max", "avg", "conv", "none"]),
    }
