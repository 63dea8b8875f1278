"""N-Jet alone: basis order, initial sigma, and pooling including its own safe-subsampling, searched with TPE."""

SAMPLER = "tpe"
NUM_SAMPLES = 12

BASE = {"backbone": "simple", "depth": 4, "width": 16, "dataset": "digits-multiscale", "epochs": 8, "lr": 1e-2}


def space(trial):
    return {
        **BASE,
        "conv": "njet",
        "conv_hparams": {
            "order": trial.suggest_int("order", 2, 4),
            "sigma_init": trial.suggest_float("sigma_init", 0.5, 2.0, log=True),
        },
        "pooling": trial.suggest_categorical("pooling", ["max", "safe", "none"]),
    }
