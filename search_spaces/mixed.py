"""The DARTS-style mixed kernel alone: the candidate set and the architecture learning rate."""

SAMPLER = "grid"

BASE = {"backbone": "simple", "depth": 4, "width": 16, "dataset": "digits-multiscale", "epochs": 8, "lr": 1e-2}


def space(trial):
    candidates = trial.suggest_categorical("kernel_sizes", ["3,5,7", "1,3,5,7"])
    return {
        **BASE,
        "conv": "mixed",
        "conv_hparams": {"kernel_sizes": [int(k) for k in candidates.split(",")]},
        "size_lr_factor": trial.suggest_categorical("size_lr_factor", [0.1, 1.0]),
        "pooling": "max",
    }
