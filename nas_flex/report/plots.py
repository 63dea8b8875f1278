"""``make_report(leaderboard, out)``: matplotlib figures (Agg, no display) and a markdown summary of a leaderboard.

Figures:
    * ``grid_or_learned.png``: the question the tool exists for. The grid's best-so-far accuracy against its
      cumulative training compute (seconds, and FLOPs x examples seen), trials in the order they ran, against each
      learned-size run as a point at its own compute (``nas_flex.report.curves``); also as tables in report.md;
    * ``sizes_vs_depth.png``: learned kernel size per layer against depth for the best learned-size trial of each
      method (FlexConv paper Fig. 6 style); with the size at initialisation (dashed) where the history holds an
      epoch-0 record, and sizes that ended at a bound (``nas_flex.train.bounds``: "at bound") ringed in red;
    * ``acc_vs_flops.png``: accuracy against FLOPs per trial, coloured by method, with the Pareto front;
    * ``grid_vs_learned.png``: per method (``params_conv``): best accuracy, and the FLOPs and parameters of that
      best trial, side by side; the grid (``conv``) and learned-size methods (``mixed`` included) told apart;
    * ``by_architecture.png``: each architecture's mean over its seeds with its 95 % t interval, and the ranking's
      verdicts against the grid's best (``nas_flex.report.architectures``);
    * ``kernels.png``: the spatial kernels and their spectra of one layer of an exported model (needs weights:
      an export directory, or a trial id to export first; otherwise skipped with a note).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nas_flex.record import TrialStatus
from nas_flex.report.architectures import architecture_lines
from nas_flex.report.curves import fixed_size_methods, grid_cost_to_reach, grid_curve, learned_points, metric_label

__all__ = ["make_report", "fixed_size_methods"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never a display
    import matplotlib.pyplot as plt

    return plt


def _sizes(row: Any) -> list[dict[str, Any]]:
    text = row.get("learned_sizes_json")
    return json.loads(text) if isinstance(text, str) and text else []


def _init_sizes(history, row: Any) -> list[dict[str, Any]]:
    """The learned sizes at initialisation: the trial's epoch-0 history record, where the history has one."""
    if history is None or history.empty or "epoch" not in history.columns:
        return []
    rec = history[(history["experiment"] == row["experiment"]) & (history["trial_id"] == row["trial_id"])
                  & (history["epoch"] == 0)]
    if "written_at" in rec.columns and "written_at" in row and len(rec) > 1:
        rec = rec[rec["written_at"] == row["written_at"]]  # the history of this row, not of an older rewrite
    return _sizes(rec.iloc[-1]) if len(rec) else []


def _sizes_vs_depth(df, metric: str, way: str, path: Path, top: int, history=None) -> str:
    plt = _plt()
    learned = df[df["params_conv"].notna() & ~df["params_conv"].isin(fixed_size_methods(df)) & df[metric].notna()]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines, with_init, bounded = [], 0, []
    for conv, group in learned.groupby("params_conv"):
        for _, row in group.sort_values(metric, ascending=way == "min").head(top).iterrows():
            recs = _sizes(row)
            if not recs:
                continue
            depth = list(range(1, len(recs) + 1))
            size = [(r["height"] + r["width"]) / 2 for r in recs]
            (line,) = ax.plot(depth, size, marker="o", label=f"{conv} {row['trial_id']} ({row[metric]:.3f})")
            marked = [(d, s, r["at_bound"]) for d, s, r in zip(depth, size, recs, strict=True) if r.get("at_bound")]
            if marked:
                ax.scatter([d for d, _, _ in marked], [s for _, s, _ in marked], s=140, facecolors="none",
                           edgecolors="red", linewidths=1.2, zorder=3)
                bounded += [f"{conv} {row['trial_id']} layer {d} ({b})" for d, _, b in marked]
            init = _init_sizes(history, row)
            if len(init) == len(recs):
                ax.plot(depth, [(r["height"] + r["width"]) / 2 for r in init], ls="--", marker=".",
                        color=line.get_color(), alpha=0.7)
                with_init += 1
            lines.append(f"{conv} {row['trial_id']}")
    if not lines:
        ax.text(0.5, 0.5, "no learned-size trials", ha="center", va="center", transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_xlabel("layer (depth)")
    ax.set_ylabel("kernel size (px, mean of height and width)")
    if bounded:
        ax.scatter([], [], s=140, facecolors="none", edgecolors="red", label="red ring: at bound")
    if with_init:
        ax.plot([], [], ls="--", color="gray", label="dashed: at initialisation")
        ax.set_title("Kernel size per layer: learned (solid) and at initialisation (dashed)", fontsize=10)
    else:
        ax.set_title("Learned kernel size per layer")
    if lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    if not lines:
        return "no learned-size trials with recorded sizes"
    init_note = (f"; the size at initialisation (the epoch-0 record) dashed for {with_init}" if with_init
                 else "; no epoch-0 record in the history, so no sizes at initialisation")
    bound_note = ("; at bound (the size stopped by its optimizer's step budget, \"schedule\", by the feature map, "
                  "\"input\", or by the layer's own clip, \"range\"; ringed in red): " + ", ".join(bounded)
                  ) if bounded else "; no size at bound"
    return f"{len(lines)} trial(s): " + ", ".join(lines) + init_note + bound_note


def _acc_vs_flops(lb, df, metric: str, path: Path) -> str:
    plt = _plt()
    way = lb.directions.get(metric, "max")
    fig, ax = plt.subplots(figsize=(6, 4))
    ok = df[df[metric].notna() & df["flops"].notna()]
    for conv, group in ok.groupby("params_conv"):
        ax.scatter(group["flops"].astype(float), group[metric].astype(float), label=str(conv), alpha=0.8)
    front = lb.pareto({metric: way, "flops": "min"}) if len(ok) else ok
    if len(front):
        front = front.sort_values("flops")
        ax.step(front["flops"].astype(float), front[metric].astype(float), where="post", color="k", lw=1,
                label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per example, trained model (FFTs counted)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric_label(metric).capitalize()} against inference cost, per trial", fontsize=10)
    if len(ok):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return ", ".join(f"{r['params_conv']} {r['trial_id']}" for _, r in front.iterrows()) if len(front) else "-"


def _grid_vs_learned(df, metric: str, way: str, path: Path) -> list[dict[str, Any]]:
    plt = _plt()
    ok = df[df[metric].notna()]
    grid = fixed_size_methods(df)  # the grid: fixed kernel sizes searched by trials; mixed learns its choice
    best = []
    for conv, group in ok.groupby("params_conv"):
        row = group.sort_values(metric, ascending=way == "min").iloc[0]
        best.append({"conv": str(conv), "trial_id": row["trial_id"], metric: float(row[metric]),
                     "flops": float(row["flops"]) if row["flops"] == row["flops"] else float("nan"),
                     "params": int(row["params"]) if row["params"] is not None and row["params"] == row["params"]
                     else 0, "trials": len(group), "kind": "grid" if conv in grid else "learned"})
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    names = [b["conv"] for b in best]
    colors = ["tab:gray" if b["kind"] == "grid" else "tab:blue" for b in best]
    for ax, key, label in zip(axes, (metric, "flops", "params"), (f"best {metric_label(metric)}",
                                                                   "FLOPs per example (best trial)",
                                                                   "parameters (best trial)")):
        ax.bar(names, [b[key] for b in best], color=colors)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.suptitle("Best trial of each method: grid (gray) and learned kernel sizes (blue)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return best


def _fmt_kernel(value: Any) -> str:
    import pandas as pd

    return "-" if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)) else str(int(value))


def _grid_panel(ax, curve, points, metric: str, cum: str, own: str, *, first: bool) -> None:
    """One panel: each grid experiment's best-so-far step curve and trials at cumulative cost ``cum``, and each
    learned run as a point at its own cost ``own``."""
    for experiment, g in curve.groupby("experiment", sort=True):
        name = "grid" if curve["experiment"].nunique() == 1 else f"grid {experiment}"
        ok = g[g["best_so_far"].notna()]
        ax.step(ok[cum], ok["best_so_far"], where="post", color="k", lw=1.6,
                label=f"{name} (conv, {len(g)} trials): best so far")
        done = g[g[metric].notna()]
        ax.scatter(done[cum], done[metric], facecolors="none", edgecolors="k", s=28, zorder=3,
                   label=f"{name}: each trial at its cumulative cost" if first else None)
        for _, t in done.iterrows():
            ax.annotate(f"k={_fmt_kernel(t['kernel_size'])}", (t[cum], t[metric]), fontsize=6, xytext=(3, -8),
                        textcoords="offset points")
    markers = "osD^v<>Ph*X"
    for i, (method, p) in enumerate(points.groupby("method", sort=True)):
        ax.scatter(p[own], p[metric], marker=markers[i % len(markers)], s=46, zorder=4, alpha=0.85,
                   label=f"{method} (learned): one run each")
    if len(curve) or len(points):
        positive = [v for v in (*curve[cum].tolist(), *points[own].tolist()) if v and v > 0]
        if positive and max(positive) / min(positive) > 20:
            ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)


def _grid_or_learned_figure(curve, points, metric: str, path: Path) -> None:
    """The grid's best-so-far ``metric`` against its cumulative training time (left) and compute (right)."""
    plt = _plt()
    label = metric_label(metric)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    for ax, cum, own, xlabel, what in (
        (axes[0], "cum_seconds", "train_seconds", "training time (s, summed over a grid's trials)", "training time"),
        (axes[1], "cum_flops", "train_flops", "forward FLOPs x training examples seen (summed over a grid's trials)",
         "training compute"),
    ):
        _grid_panel(ax, curve, points, metric, cum, own, first=ax is axes[0])
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(f"{label} (grid: best so far)", fontsize=8)
        ax.set_title(f"Grid or learned: {label} against {what}", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))  # room for the legend below the panels
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _grid_lines(experiment: str, g, metric: str) -> list[str]:
    """The markdown summary and table of one experiment's grid, trial by trial in run order."""
    label = metric_label(metric)
    best = g["best_so_far"].iloc[-1]
    best_text = f"{best:.4f}" if best == best else "-"
    lines = [f"Grid of experiment `{experiment}`: {len(g)} trials, {g['cum_seconds'].iloc[-1]:.1f} s and "
             f"{g['cum_flops'].iloc[-1]:.3g} FLOPs x examples of training in all; best {label} {best_text}.", "",
             f"| # | trial | kernel size | status | {label} | training s | cumulative s | "
             f"cumulative FLOPs x examples | best so far |", "|---|---|---|---|---|---|---|---|---|"]
    for _, t in g.iterrows():
        value = f"{t[metric]:.4f}" if t[metric] == t[metric] else "-"
        so_far = f"{t['best_so_far']:.4f}" if t["best_so_far"] == t["best_so_far"] else "-"
        lines.append(f"| {t['order']} | {t['trial_id']} | {_fmt_kernel(t['kernel_size'])} | {t['status']} | "
                     f"{value} | {t['train_seconds']:.1f} | {t['cum_seconds']:.1f} | {t['cum_flops']:.3g} | "
                     f"{so_far} |")
    return [*lines, ""]


def _learned_lines(points, curves: dict, metric: str, way: str) -> list[str]:
    """The markdown table of the learned runs: each one's cost, and what the grid spent to reach its ``metric``."""
    lines = [f"| learned method | trial | {metric_label(metric)} | training s | FLOPs x examples | "
             "grid trials to reach it | grid s to reach it | grid FLOPs x examples to reach it |",
             "|---|---|---|---|---|---|---|---|"]
    for _, p in points.iterrows():
        g = curves.get(p["experiment"], next(iter(curves.values())) if len(curves) == 1 else None)
        reach = grid_cost_to_reach(g, float(p[metric]), way) if g is not None else None
        if g is None:
            cost = "no grid | - | -"
        elif reach is None:
            cost = f"not reached in {len(g)} | - | -"
        else:
            cost = f"{reach['trials']} | {reach['seconds']:.1f} | {reach['flops']:.3g}"
        lines.append(f"| {p['method']} | {p['trial_id']} | {p[metric]:.4f} | {p['train_seconds']:.1f} | "
                     f"{p['train_flops']:.3g} | {cost} |")
    return [*lines, ""]


def _grid_or_learned(df, metric: str, way: str, path: Path) -> list[str]:
    """The grid's best-so-far ``metric`` against its cumulative training compute, the learned runs as points; the
    figure and the markdown lines (summary and tables) of its section."""
    curve = grid_curve(df, metric, way)
    points = learned_points(df, metric)
    _grid_or_learned_figure(curve, points, metric, path)
    lines = ["## Grid or learned?", "", "![grid or learned](grid_or_learned.png)", "",
             "The grid (`conv`: one trial per kernel size and other choice) is charged for every trial in the order "
             "they ran (`started`); each learned-size run (`mixed` included: it learns its choice among the grid's "
             "sizes in one run) is one point at its own cost. Training compute: training seconds, and forward FLOPs "
             "per example of the trained model x training examples seen (the backward pass is not counted). Labels "
             "next to the grid's trials: their kernel size (k).", ""]
    if curve.empty:
        lines += ["No grid (`conv`) trials in this leaderboard: nothing to compare the learned runs with.", ""]
    curves = {e: g for e, g in curve.groupby("experiment", sort=True)}
    for experiment, g in curves.items():
        lines += _grid_lines(experiment, g, metric)
    if len(points):
        lines += _learned_lines(points, curves, metric, way)
    return lines


def _kernels(export_dir: Path, layer: str | None, path: Path) -> str:
    import torch

    from nas_flex.export import ExportError, load_model
    from nas_flex.layers.base import KernelLayer

    plt = _plt()
    model = load_model(export_dir)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, KernelLayer)}
    if not layers:
        raise ExportError(f"the model exported in {str(export_dir)!r} has no registry layers to plot")
    if layer is None:
        learned = [n for n, m in layers.items() if m.learns_size]
        layer = (learned or list(layers))[0]
    if layer not in layers:
        raise ExportError(f"no layer {layer!r} in the exported model; layers: {list(layers)}")
    m = layers[layer]
    with torch.no_grad():
        if m.domain == "frequency":
            kernel = torch.fft.fftshift(m.spatial_kernel(), dim=(-2, -1))  # circular: centre tap (0, 0)
        else:
            kernel = m.to_conv2d().weight
        kernel = kernel.detach().float().cpu()  # (C_out, C_in, kh, kw)
        spectrum = torch.fft.fftshift(torch.fft.fft2(kernel, s=m.last_input_size), dim=(-2, -1)).abs()
    n = min(4, kernel.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 4.8), squeeze=False)
    for i in range(n):
        vmax = float(kernel[i, 0].abs().max()) or 1.0  # symmetric colours: white is 0
        axes[0][i].imshow(kernel[i, 0].numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        axes[0][i].set_title(f"out {i}, in 0: spatial", fontsize=8)
        axes[1][i].imshow(spectrum[i, 0].numpy(), cmap="viridis")
        axes[1][i].set_title("|spectrum|", fontsize=8)
        for ax in (axes[0][i], axes[1][i]):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{layer} ({m.kind}, {m.domain}): kernel {tuple(kernel.shape[-2:])}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"layer `{layer}` ({m.kind}, {m.domain} domain), kernel {kernel.shape[-2]}x{kernel.shape[-1]}"


def _kernel_lines(lb, out: Path, export_dir: str | os.PathLike | None, trial_id: str | None, layer: str | None,
                  log: Any) -> list[str]:
    """The kernel section: the figure of an export's layer, exporting ``trial_id`` first where asked."""
    lines = ["## Kernels", ""]
    weights = None
    if trial_id is not None and export_dir is None:
        from nas_flex.export import export_trial

        export_dir = out / f"export_{trial_id}"
        log(f"exporting trial {trial_id} into {export_dir} for the kernel figure")
        # the figure needs the weights only; the report's own export folder is replaced when the report is remade
        exported = export_trial(lb, trial_id, export_dir, log=log, onnx=False, force=True)
        weights = exported.architecture["source"].get("weights")
        log(f"trial {trial_id}'s weights: {weights}")
    if export_dir is None:
        return [*lines, "Skipped: no trained weights given. Pass `--trial ID` (exports that trial with the weights "
                "its search kept, or retrains it from its config where none were kept) or `--export DIR` (an "
                "existing `nas-flex export` folder).", ""]
    note = _kernels(Path(export_dir), layer, out / "kernels.png")
    source = f" (weights: {weights})" if weights else ""
    return [*lines, "![kernels](kernels.png)", "", f"Kernels of {note}, from the export in `{export_dir}`{source}: "
            "top the spatial kernel (frequency layers: the circular kernel, centred), bottom its magnitude spectrum.",
            ""]


def _comparison_lines(lb, done, history, metric: str, way: str, out: Path, top: int) -> list[str]:
    """The sections on completed trials: sizes per layer, accuracy against FLOPs, the best trial of each method."""
    label = metric_label(metric)
    sizes_note = _sizes_vs_depth(done, metric, way, out / "sizes_vs_depth.png", top, history)
    front_note = _acc_vs_flops(lb, done, metric, out / "acc_vs_flops.png")
    best = _grid_vs_learned(done, metric, way, out / "grid_vs_learned.png")
    return [
        "## Kernel size per layer", "", "![learned sizes](sizes_vs_depth.png)", "",
        f"Best learned-size trials: {sizes_note}.", "",
        "## Accuracy against inference cost", "", "![accuracy against FLOPs](acc_vs_flops.png)", "",
        f"Pareto front ({label} {way}, FLOPs per example min): {front_note}.", "",
        "## Best trial of each method", "", "![best trial of each method](grid_vs_learned.png)", "",
        f"| method | kind | trials | best trial | {label} | MFLOPs per example | params |",
        "|---|---|---|---|---|---|---|",
        *[f"| {b['conv']} | {b['kind']} | {b['trials']} | {b['trial_id']} | {b[metric]:.4f} | "
          f"{b['flops'] / 1e6:.3f} | {b['params']} |" for b in best],
        "",
    ]


def make_report(leaderboard: str | os.PathLike, out: str | os.PathLike, *, metric: str = "metrics_val_acc",
                top: int = 1, export_dir: str | os.PathLike | None = None, trial_id: str | None = None,
                layer: str | None = None, log: Any = None) -> Path:
    """Write the report's PNGs and ``report.md`` (linking them) to ``out``; return the path of ``report.md``.

    Args:
        leaderboard: the leaderboard directory.
        out: the report directory (created).
        metric: the accuracy column (ranked in its recorded direction).
        top: trials per learned-size method in the sizes-against-depth figure.
        export_dir: an export directory (``nas_flex.export``) whose weights give the kernel figure.
        trial_id: instead, export this trial first into ``out/export_<trial_id>`` and plot its kernels. The export
            uses the weights the search kept for the trial, and **retrains** it from its config only where none
            were kept (``nas_flex.export.export_trial``).
        layer: the layer (module name) for the kernel figure; default the first learned-size layer.
        log: called with progress lines.

    Without ``export_dir`` or ``trial_id`` the kernel figure is skipped, with a note in ``report.md``.
    """
    from nas_flex.leaderboard import Leaderboard

    _plt()
    log = log or (lambda _: None)
    lb = Leaderboard(leaderboard)
    df = lb.to_pandas()
    directions = lb.directions
    if metric not in directions:
        from nas_flex.errors import LeaderboardSchemaError

        raise LeaderboardSchemaError(f"unknown metric {metric!r}; valid: {', '.join(directions)}")
    way = directions[metric]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = df[df["status"] == TrialStatus.COMPLETED.value]
    lines = [f"# nas_flex report: {lb.path}", "",
             f"{len(df)} trials ({len(done)} completed), ranked by {metric_label(metric)} (`{metric}`, {way}).", "",
             *_grid_or_learned(df, metric, way, out / "grid_or_learned.png"),
             *architecture_lines(df, metric, way, out / "by_architecture.png", metric_label(metric)),
             *_comparison_lines(lb, done, lb.history(), metric, way, out, top),
             *_kernel_lines(lb, out, export_dir, trial_id, layer, log)]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    log(f"report written to {report}")
    return report
