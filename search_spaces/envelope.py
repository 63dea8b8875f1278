"""The adaptive Gaussian envelope (ACONV) alone: base grid n and the initial aperture range, searched with TPE."""

SAMPLER = "tpe"
NUM_SAMPLES = 12

BASE = {"backbone": "simple", "depth": 4, "width": 16, "dataset": "digits-multiscale", "epochs": 8, "lr": 1e-2}


def space(trial):
    low = trial.suggest_float("sigma_low", 0.05, 0.3)
    return {
        **BASE,
        "conv": "envelope",
        "kernel_size": trial.suggest_categorical("kernel_size", [5, 7]),
        "conv_hparams": {"sigma_init": [low, low + trial.suggest_float("sigma_span", 0.0, 0.5)]},
        "pooling": trial.suggest_categorical("pooling", ["max", "avg"]),
    }
