"""The ``nas-flex`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from nas_flex import __version__
from nas_flex.errors import NasFlexError

__all__ = ["main", "build_parser"]


def _cmd_layers(args: argparse.Namespace) -> int:
    from nas_flex.layers import available, get, hparam_names

    for name in available():
        cls = get(name)
        kind = "fixed size" if not cls.learns_size else f"learned size, {cls.domain} domain"
        hp = ", ".join(h for h in hparam_names(name) if h not in ("device", "dtype"))
        print(f"{name:<9} {cls.__name__:<12} {kind:<31} hparams: {hp}")
    return 0


def _demo_fit(layer, x, target, steps: int) -> None:
    """``steps`` Adam steps of ``layer`` towards ``target``; the size parameters train by the layer's own recipe
    (``KernelLayer.size_recipe``, through ``nas_flex.train.optim``), as in a trial."""
    import torch

    from nas_flex.train.config import resolve_config
    from nas_flex.train.optim import make_optimizers

    opts = make_optimizers(layer, resolve_config({"lr": 1e-2}), schedule=lambda step: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for _ in range(steps):
        opts.zero_grad()
        loss = (layer(x) - target).pow(2).mean() + layer.regularization()
        loss.backward()
        opts.step(scaler)
        layer.constrain_()


def _demo_row(name: str, layer, x, args: argparse.Namespace) -> str:
    """The demo's line of one fitted layer: its kernel size, parameters, and forward+backward time next to an
    nn.Conv2d 3x3 and one of the nearest odd size."""
    from torch import nn

    from nas_flex.bench import compare, fwd_bwd

    c, hw, device = args.channels, args.size, args.device
    kh, kw = layer.effective_kernel_size
    k_same = 2 * round((max(kh, kw) - 1) / 2) + 1  # nearest odd side
    k_same = max(1, min(k_same, hw if hw % 2 else hw - 1))
    conv3 = nn.Conv2d(c, c, 3, padding=1).to(device)
    conv_k = nn.Conv2d(c, c, k_same, padding=k_same // 2).to(device)
    xg = x.clone().requires_grad_(True)
    t = compare(
        {
            "layer": fwd_bwd(lambda m=layer, x=xg: m(x)),
            "c3": fwd_bwd(lambda m=conv3, x=xg: m(x)),
            "ck": fwd_bwd(lambda m=conv_k, x=xg: m(x)),
        },
        rounds=args.rounds,
        device=device,
    )
    params = sum(p.numel() for p in layer.parameters())
    size = f"{kh:.1f} x {kw:.1f}" + ("  (fixed)" if not layer.learns_size else "")
    return (f"{name:<9} {size:<24} {params:>8} {t['layer'] * 1e3:>7.1f} {t['layer'] / t['c3']:>9.2f} "
            f"{t['layer'] / t['ck']:>7.2f} (k={k_same})")


def _cmd_demo(args: argparse.Namespace) -> int:
    """Every registry layer: a short fit, its learned size, and its speed next to nn.Conv2d."""
    import torch
    from torch import nn

    import nas_flex
    from nas_flex.layers import available, build, get

    torch.manual_seed(0)
    n, c, hw, device = args.batch, args.channels, args.size, args.device
    print(
        f"nas_flex {__version__}: each layer maps {n} x {c} x {hw} x {hw} to {c} channels on {device}; "
        f"{args.steps} Adam steps fit a 9x9 box blur (a target with a known size), then forward+backward is "
        "timed side by side with nn.Conv2d.\n"
    )
    x = torch.randn(n, c, hw, hw, device=device)
    with torch.no_grad():
        target = nn.functional.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)

    header = f"{'layer':<9} {'kernel h x w (px)':<24} {'params':>8} {'ms':>7} {'/conv3x3':>9} {'/conv same k':>13}"
    print(header)
    print("-" * len(header))
    for name in available():
        hparams = dict(get(name).example_hparams) if args.small else {}
        layer = build(name, c, c, **hparams).to(device)
        _demo_fit(layer, x, target, args.steps)
        print(_demo_row(name, layer, x, args), flush=True)
    print(
        "\nms: forward+backward, median of interleaved rounds (nas_flex.bench). The nn.Conv2d baselines run "
        "spatially;\nnas_flex layers switch to FFT convolution where that is cheaper (nas_flex.functional.conv2d_same)."
    )
    names = [nm for nm in ("flexconv", "njet", "envelope", "mixed") if nm in available()]
    model = nn.Sequential(*[build(nm, 3 if i == 0 else 8, 8) for i, nm in enumerate(names)])
    model(torch.randn(1, 3, hw, hw))
    print(f"\nnas_flex.learned_sizes of a fresh {' -> '.join(names)} stack on a {hw}x{hw} input:")
    print(nas_flex.learned_sizes(model).iloc[:, :4].to_string(index=False))
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    """A leaderboard directory as a table: filter, sort, top N, chosen columns."""
    import warnings

    from nas_flex.leaderboard import CorruptFileWarning, format_leaderboard

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorruptFileWarning)
        if args.by_architecture:
            from nas_flex.leaderboard.ranking import format_by_architecture

            text = format_by_architecture(args.path, args.sort, experiment=args.experiment, top=args.top)
        else:
            text = format_leaderboard(args.path, top=args.top, sort=args.sort, where=args.where,
                                      columns=args.columns, status=None if args.all_statuses else "completed")
    for w in caught:  # a skipped unreadable file: one line, not a warning with its source location
        if issubclass(w.category, CorruptFileWarning):
            print(f"nas-flex: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(text)
    return 0


def _parse_objectives(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    from nas_flex.record import METRICS

    out = {}
    for item in items:
        metric, _, mode = item.partition(":")
        out[metric] = mode or METRICS.get(metric, "")
    return out


def _cmd_search(args: argparse.Namespace) -> int:
    """Run a search space file with Ray Tune + Optuna; print the leaderboard and the best learned sizes."""
    from nas_flex.leaderboard import format_leaderboard
    from nas_flex.tune import search

    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    lb = search(
        args.space, storage=args.storage, num_samples=args.num_samples, experiment=args.experiment,
        address=args.address, resources_per_trial=resources, scheduler=args.scheduler,
        objectives=_parse_objectives(args.objective), sampler=args.sampler, max_concurrent=args.max_concurrent,
        seed=args.seed, repeats=args.repeats, resume=args.resume,
        overrides={"dataset": args.dataset, "epochs": args.epochs},
        verbose=0 if args.quiet else 1, reuse_actors=not args.fresh_workers,
    )
    df = lb.to_pandas()
    experiment = args.experiment or (df.sort_values("written_at")["experiment"].iloc[-1] if len(df) else None)
    print(f"\nLeaderboard {args.storage} (experiment {experiment}):")
    print(format_leaderboard(args.storage, sort="metrics_val_acc", where=f"experiment == {experiment!r}",
                             status=None))
    from nas_flex.leaderboard.ranking import format_by_architecture

    print(f"\nBy architecture (experiment {experiment}):")
    print(format_by_architecture(args.storage, experiment=experiment))
    from nas_flex.record import TrialStatus

    done = (df["experiment"] == experiment) & (df["status"] == TrialStatus.COMPLETED.value)
    from nas_flex.leaderboard.sizes import format_size_changes, learns_size, size_changes

    learned = df[done & learns_size(df).fillna(False).astype(bool)]
    if len(learned):
        # by the architecture's mean over its seeds (repeats), then the trial's own value
        arch = learned["architecture_key"].fillna(learned["trial_id"])
        mean = learned["metrics_val_acc"].groupby(arch).transform("mean")
        ranked = learned.assign(_mean=mean).sort_values(["_mean", "metrics_val_acc"], ascending=False, kind="stable")
        best = ranked.iloc[0]
        seeds = int((arch == arch[best.name]).sum())
        print(f"\nBest learned-size trial: {best['trial_id']} ({best['params_conv']}), val_acc "
              f"{best['metrics_val_acc']:.4f}" + (f" (its architecture's mean over {seeds} seeds: {best['_mean']:.4f})"
                                                  if seeds > 1 else "") + f", {best['flops'] / 1e6:.2f} MFLOPs.")
        print("Each learned-size method's best trial: kernel size per layer and its raw size parameter, at "
              "initialisation -> after training:")
        for _, trial in ranked.drop_duplicates("params_conv").iterrows():
            print(f"{trial['params_conv']} ({trial['trial_id']}, val_acc {trial['metrics_val_acc']:.4f}):")
            print(format_size_changes(size_changes(trial.to_frame().T)) or "  (no size records)")
    print(f"\nQuery it with pandas: pd.read_parquet({str(args.storage)!r}); or: nas-flex leaderboard {args.storage}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Export a leaderboard trial: architecture JSON, weights, TorchScript / torch.export / ONNX deployables."""
    from nas_flex.export import export_best, export_trial

    common = {"weights": args.weights, "check_examples": args.check_examples, "rtol": args.rtol, "log": print,
              "onnx": not args.no_onnx, "force": args.force}
    if args.trial is not None:
        result = export_trial(args.path, args.trial, args.out, experiment=args.experiment, **common)
    else:
        result = export_best(args.path, args.out, metric=args.metric, **common)
    src = result.architecture["source"]
    print(f"exported trial {src.get('trial_id')} ({result.architecture['config'].get('conv')}) to {result.out}")
    for layer in result.architecture["layers"]:
        kh, kw = layer["kernel_size"]
        print(f"  {layer['name']:<24} {layer['kind']:<9} learned {layer['height']:6.2f} x {layer['width']:6.2f}"
              f" -> {kh} x {kw}  deployed as {layer['deployed']['module']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """Figures and a markdown summary of a leaderboard."""
    from nas_flex.report import make_report

    if args.trial is not None and args.export is None:
        print(f"nas-flex report: trial {args.trial} is exported for the kernel figure (with the weights its search "
              "kept, else retrained from its config); pass --export DIR to use an existing export instead.")
    path = make_report(args.path, args.out, metric=args.metric, top=args.top, export_dir=args.export,
                       trial_id=args.trial, layer=args.layer, log=print)
    print(f"open {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas-flex", description="Grid, differentiable and learned kernel sizes, compared in one search."
    )
    parser.add_argument("--version", action="version", version=f"nas_flex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="list the registry layers and their hyperparameters")
    p.set_defaults(func=_cmd_layers)

    p = sub.add_parser("demo", help="every layer: learned size after a short fit, speed next to nn.Conv2d")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--size", type=int, default=32, help="input height and width")
    p.add_argument("--steps", type=int, default=10, help="Adam steps before timing")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--small", action="store_true", help="use each layer's small example hyperparameters")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("leaderboard", help="print a leaderboard directory (one Parquet file per trial) as a table")
    p.add_argument("path", help="the leaderboard directory")
    p.add_argument("--top", type=int, default=None, metavar="N", help="only the first N rows after sorting")
    p.add_argument("--sort", default="metrics_val_acc", metavar="METRIC",
                   help="sort column: best first for a metric with a recorded direction, else ascending "
                        "(default: metrics_val_acc)")
    p.add_argument("--where", default=None, metavar="EXPR",
                   help="a filter: columns compared with literals, and / or / not, in [...], isna(col), e.g. "
                        "\"params_conv == 'njet' and flops < 1e6\" (never run as Python; see docs/queries.md)")
    p.add_argument("--all-statuses", action="store_true",
                   help="list trials of every status (default: completed trials only)")
    p.add_argument("--columns", nargs="+", default=None, metavar="COLUMN",
                   help="columns to show, space or comma separated (default: a summary set)")
    p.add_argument("--by-architecture", action="store_true",
                   help="one line per architecture (its seeds grouped): n, mean +- sd, 95%% t interval, and the "
                        "difference from the grid's best with a paired t-test (--sort names the metric)")
    p.add_argument("--experiment", default=None, help="with --by-architecture: only this experiment's rows")
    p.set_defaults(func=_cmd_leaderboard)

    p = sub.add_parser("search", help="run a search space (.py defining space(trial)) as Ray Tune trials")
    p.add_argument("space", help="a .py file defining space(trial) -> trial config (see search_spaces/)")
    p.add_argument("--storage", required=True, help="the leaderboard folder (a shared path on a cluster)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="trials to run (default: a grid's size; required otherwise); with --resume the experiment's "
                        "new total (default: its recorded one)")
    p.add_argument("--dataset", default=None, help="override the space's dataset")
    p.add_argument("--epochs", type=int, default=None, help="override the space's epochs")
    p.add_argument("--experiment", default=None, help="experiment name (default: space name + time)")
    p.add_argument("--resume", action="store_true",
                   help="continue this space's latest (or the --experiment) experiment in --storage: finished trials "
                        "are kept, unfinished ones go on from their last epoch")
    p.add_argument("--address", default=None,
                   help="join a Ray cluster: auto or ray://host:10001 (default: a local Ray on this machine's CPUs)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial reserves (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions share a GPU, e.g. 0.5")
    p.add_argument("--scheduler", choices=["asha"], default=None,
                   help="early stopping on the first objective; stopped trials reach Optuna as PRUNED")
    p.add_argument("--objective", action="append", metavar="METRIC[:max|min]",
                   help="repeat for multi-objective, e.g. --objective val_acc:max --objective flops:min")
    p.add_argument("--sampler", choices=["tpe", "grid", "random"], default=None, help="default: the space's")
    p.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    p.add_argument("--seed", type=int, default=0,
                   help="the sampler's seed, and the experiment seed of --repeats (default 0)")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="train every sampled architecture under N derived seeds, one row each; the sampler sees "
                        "their mean and --num-samples counts architectures (default: the space's REPEATS, else 1)")
    p.add_argument("--fresh-workers", action="store_true",
                   help="start a new worker process for every trial (Ray's reuse_actors=False); default: a finished "
                        "trial's worker runs the next one, its imports and data already loaded")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("export", help="export a trial: architecture JSON, weights, TorchScript / torch.export / "
                                      "ONNX model")
    p.add_argument("path", help="the leaderboard directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="export the best completed trial by --metric")
    which.add_argument("--trial", default=None, metavar="ID", help="export this trial id")
    p.add_argument("--metric", default="metrics_val_acc", help="ranking metric for --best (default: metrics_val_acc)")
    p.add_argument("--experiment", default=None, help="the experiment of --trial, where ids repeat")
    p.add_argument("--out", required=True, help="the export directory (new or empty; see --force)")
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty --out: the new export is written beside it and swapped in at the end, "
                        "so a failure leaves the old folder as it was")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="trained weights (.safetensors, a torch state_dict or a run_trial trial_state.pt); default: "
                        "the weights the search kept for the trial, else it is retrained from its config")
    p.add_argument("--check-examples", type=int, default=64, metavar="N",
                   help="validation examples the deployable model is checked on (default 64)")
    p.add_argument("--rtol", type=float, default=1e-4, help="tolerance of that check, relative to the output scale")
    p.add_argument("--no-onnx", action="store_true",
                   help="do not write model.onnx (ONNX needs onnx, onnxscript and onnxruntime: the export extra)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("report", help="figures (PNG) and a markdown summary of a leaderboard")
    p.add_argument("path", help="the leaderboard directory")
    p.add_argument("--out", required=True, help="the report directory")
    p.add_argument("--metric", default="metrics_val_acc", help="the accuracy column (default: metrics_val_acc)")
    p.add_argument("--top", type=int, default=1, help="trials per learned-size method in the size-per-layer figure")
    kernels = p.add_mutually_exclusive_group()
    kernels.add_argument("--trial", default=None, metavar="ID",
                         help="plot this trial's kernels: exports it into OUT/export_ID with the weights its "
                              "search kept (else retrained from its config)")
    kernels.add_argument("--export", default=None, metavar="DIR", help="plot the kernels of this export directory")
    p.add_argument("--layer", default=None, help="the layer (module name) to plot; default the first learned one")
    p.set_defaults(func=_cmd_report)
    return parser


def _expected(err: BaseException) -> bool:
    """Failures of the outside world, not bugs: a path that cannot be read or written, an unreachable cluster
    (ConnectionError), a damaged Parquet file (pyarrow's errors, when pyarrow is loaded)."""
    arrow = sys.modules.get("pyarrow")
    return isinstance(err, OSError) or (arrow is not None and isinstance(err, arrow.ArrowException))


def _one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] + (" (...)" if len(lines) > 1 else "")) if lines else type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "device", "unset") is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return int(args.func(args) or 0)
    except NasFlexError as err:
        print(f"nas-flex: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # one line naming what failed, not a traceback; NAS_FLEX_TRACEBACK=1 shows the traceback
        if not _expected(err) or os.environ.get("NAS_FLEX_TRACEBACK"):
            raise
        print(f"nas-flex: error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas-flex: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
