"""The DARTS-style mixed kernel alone: the candidate set, how the alphas train, and DARTS's bilevel update."""

import runpy
from pathlib import Path

SAMPLER = "grid"

# the main job's backbone, data, width and learning rate (grid_vs_learned.py, beside this file), at this space's
# budget: 8 epochs of batch 64. In a copy of this file kept elsewhere, write BASE out as a dict.
BASE = {**runpy.run_path(str(Path(__file__).with_name("grid_vs_learned.py")))["BASE"], "epochs": 8, "batch_size": 64}


def space(trial):
    candidates = trial.suggest_categorical("kernel_sizes", ["3,5,7", "1,3,5,7"])
    return {
        **BASE,
        "conv": "mixed",
        "conv_hparams": {"kernel_sizes": [int(k) for k in candidates.split(",")]},
        # None: DARTS's recipe (the alphas' own Adam, lr 3e-4); 1.0: the alphas in the weights' optimizer at its lr
        "size_lr_factor": trial.suggest_categorical("size_lr_factor", [None, 1.0]),
        # joint: alphas step on the training batch; bilevel: DARTS first-order, on a held-out half of it
        "size_update": trial.suggest_categorical("size_update", ["joint", "bilevel"]),
        "pooling": "max",
    }
