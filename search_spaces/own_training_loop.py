"""Your own model and training loop in a search: torchvision's ResNet-18 with N-Jet / FlexConv layers, conv x pooling.

Copy this file and edit it. ``space`` draws the conv kind and the pooling after the stem; ``trainable`` is a plain
PyTorch loop that nas_flex runs for each drawn config instead of its own loop (``nas_flex.search`` picks up a
module-level ``trainable``). It builds ``torchvision.models.resnet18(weights=None)``, puts learned-size layers into it
with one call (``nas_flex.models.convert``), reads the images of a folder of class subfolders (dataset
``imagefolder``), and reports each epoch through ``ctx``; nas_flex records the learned sizes and FLOPs, keeps a
checkpoint for a retried or resumed trial and writes the leaderboard row.

    nas-flex search search_spaces/own_training_loop.py --storage runs/own

or, from Python, ``nas_flex.search("search_spaces/own_training_loop.py", storage="runs/own")``.
"""

from pathlib import Path

import torch
from torch import nn

SAMPLER = "grid"

# a folder of class subfolders (class_a/*.png, class_b/*.png, ...), or one with train/ and val/ inside; resolved
# here, in the process that starts the search, because trials run in other working folders
DATA_ROOT = str(Path("data/my_images").resolve())
BASE = {"dataset": "imagefolder", "data_root": DATA_ROOT, "image_size": 32, "epochs": 5, "batch_size": 32,
        "lr": 1e-3, "weight_decay": 1e-4}


def space(trial):
    return {
        **BASE,
        "conv": trial.suggest_categorical("conv", ["conv", "njet", "flexconv"]),
        "pooling": trial.suggest_categorical("pooling", ["max", "avg", "none"]),
    }


def build_model(config, channels, num_classes):
    """torchvision's ResNet-18, its stride-1 3x3 convolutions swapped for the config's layer kind."""
    import torchvision

    from nas_flex.models import convert

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if channels != 3:  # grayscale images: a stem that takes them
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.maxpool = {"max": nn.MaxPool2d(3, stride=2, padding=1), "avg": nn.AvgPool2d(3, stride=2, padding=1),
                     "none": nn.Identity()}[config["pooling"]]
    convert(model, to=config["conv"])  # strided and 1x1 convolutions stay as they are
    return model


def subset(dataset, n):
    return dataset if not n else torch.utils.data.Subset(dataset, range(min(n, len(dataset))))


def evaluate(model, loader, device):
    model.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x).float()
            loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            count += len(y)
    model.train()
    return loss / count, correct / count


def trainable(config, ctx):
    """One trial: ``config`` is the drawn config with every default filled in; ``ctx`` is nas_flex's TrialContext."""
    data = ctx.data()  # the config's dataset (imagefolder here), split into train and val
    model = build_model(config, data.input_shape[0], data.num_classes).to(ctx.device)
    # each learned-size layer's size parameters get their method's own learning rate (the papers' recipes)
    optimizer = torch.optim.AdamW(ctx.param_groups(model, lr=config["lr"]))
    train = torch.utils.data.DataLoader(subset(data.train, config["train_subset"]), batch_size=config["batch_size"],
                                        shuffle=True, generator=torch.Generator().manual_seed(ctx.seed))
    val = torch.utils.data.DataLoader(subset(data.val, config["val_subset"]), batch_size=config["batch_size"])
    amp = {"device_type": ctx.device.type, "dtype": torch.bfloat16, "enabled": ctx.device.type == "cuda"}
    start = ctx.load(model, optimizer=optimizer)  # > 0 when a retried or resumed trial continues
    for _ in range(start, config["epochs"]):
        total, seen = 0.0, 0
        for x, y in train:
            x, y = x.to(ctx.device), y.to(ctx.device)
            with torch.autocast(**amp):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad()
            (loss + ctx.regularization(model)).backward()
            optimizer.step()
            ctx.constrain(model)  # keep the learned sizes in their valid range
            total, seen = total + float(loss.detach()) * len(y), seen + len(y)
        val_loss, val_acc = evaluate(model, val, ctx.device)
        ctx.report(model, train_loss=total / seen, val_loss=val_loss, val_acc=val_acc)
        ctx.save(model, optimizer=optimizer)
