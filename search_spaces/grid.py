"""The discrete grid: every kernel size x pooling pair, trained as plain convolutions (exhaustive).

Copy this file to write your own space: define ``space(trial) -> trial config`` (keys: nas_flex.train.KEY_DOCS),
drawing choices with trial.suggest_categorical / suggest_int / suggest_float, and set SAMPLER ("grid", "tpe" or
"random"). A grid must use categorical (or stepped) choices only.
"""

import runpy
from pathlib import Path

SAMPLER = "grid"

# the main job's backbone, data, width and learning rate (grid_vs_learned.py, beside this file), at this space's
# budget: 8 epochs of batch 64. In a copy of this file kept elsewhere, write BASE out as a dict.
BASE = {**runpy.run_path(str(Path(__file__).with_name("grid_vs_learned.py")))["BASE"], "epochs": 8, "batch_size": 64}


def space(trial):
    return {
        **BASE,
        "conv": "conv",
        "kernel_size": trial.suggest_categorical("kernel_size", [3, 5, 7]),
        "pooling": trial.suggest_categorical("pooling", ["max", "avg", "conv", "none"]),
    }
