"""The frequency-domain layers, NIFF and CF-Conv, with their main options (exhaustive)."""

SAMPLER = "grid"

BASE = {"backbone": "simple", "depth": 4, "width": 16, "dataset": "digits-multiscale", "epochs": 8, "lr": 1e-2}


def space(trial):
    method = trial.suggest_categorical("method", ["niff", "cfconv"])
    if method == "niff":
        hp = {"mode": trial.suggest_categorical("mode", ["separable", "full"])}
    else:
        hp = {"sampled_positions": trial.suggest_categorical("sampled_positions", [4096, 32768])}
    return {**BASE, "conv": method, "conv_hparams": hp, "pooling": "max"}
