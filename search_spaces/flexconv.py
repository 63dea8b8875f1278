"""FlexConv alone: kernel net, initial mask size, pooling and the mask's learning rate, searched with TPE."""

import runpy
from pathlib import Path

SAMPLER = "tpe"
NUM_SAMPLES = 12

# the main job's backbone, data, width and learning rate (grid_vs_learned.py, beside this file), at this space's
# budget: 8 epochs of batch 64. In a copy of this file kept elsewhere, write BASE out as a dict.
BASE = {**runpy.run_path(str(Path(__file__).with_name("grid_vs_learned.py")))["BASE"], "epochs": 8, "batch_size": 64}


def space(trial):
    return {
        **BASE,
        "conv": "flexconv",
        "conv_hparams": {
            "kernel_net": trial.suggest_categorical("kernel_net", ["magnet", "mfn_gabor", "siren"]),
            "mask_sigma_init": trial.suggest_float("mask_sigma_init", 0.05, 0.3, log=True),
        },
        "pooling": trial.suggest_categorical("pooling", ["max", "avg", "none"]),
        # None: the mask's own recipe (0.1x the weights' lr, the authors' code); 1.0 overrides it
        "size_lr_factor": trial.suggest_categorical("size_lr_factor", [None, 1.0]),
    }
