"""``make_report(leaderboard, out)``: matplotlib figures (Agg, no display) and a markdown summary of a leaderboard.

Figures:
    * ``sizes_vs_depth.png``: learned kernel size per layer against depth for the best learned-size trial of each
      method (FlexConv paper Fig. 6 style), and dashed where each started (``initial_sizes_json``, epoch 0);
    * ``acc_vs_flops.png``: accuracy against FLOPs per trial, coloured by method, with the Pareto front;
    * ``grid_vs_learned.png``: per method (``params_conv``): best accuracy, and the FLOPs and parameters of that
      best trial, side by side; fixed-size (grid) methods and learned-size ones are told apart;
    * ``kernels.png``: the spatial kernels and their spectra of one layer of an exported model (needs weights:
      an export directory, or a trial id to export first; otherwise skipped with a note).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["make_report", "FIXED_SIZE_METHODS"]

FIXED_SIZE_METHODS = ("conv", "mixed")  # a discrete grid (conv) or a choice among grid sizes (DARTS-style mixed)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never a display
    import matplotlib.pyplot as plt

    return plt


def _sizes(row: Any, column: str = "learned_sizes_json") -> list[dict[str, Any]]:
    text = row.get(column)
    return json.loads(text) if isinstance(text, str) and text else []


def _sizes_vs_depth(df, metric: str, path: Path, top: int) -> str:
    plt = _plt()
    learned = df[df["params_conv"].notna() & ~df["params_conv"].isin(["conv"]) & df[metric].notna()]
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = []
    for conv, group in learned.groupby("params_conv"):
        for _, row in group.sort_values(metric, ascending=False).head(top).iterrows():
            recs = _sizes(row)
            if not recs:
                continue
            depth = list(range(1, len(recs) + 1))
            size = [(r["height"] + r["width"]) / 2 for r in recs]
            line = ax.plot(depth, size, marker="o", label=f"{conv} {row['trial_id']} ({row[metric]:.3f})")[0]
            init = _sizes(row, "initial_sizes_json")
            if len(init) == len(recs):  # where the sizes started (epoch 0), dashed in the same colour
                ax.plot(depth, [(r["height"] + r["width"]) / 2 for r in init], ls="--", marker=".", lw=0.8,
                        color=line.get_color())
            lines.append(f"{conv} {row['trial_id']}")
    if not lines:
        ax.text(0.5, 0.5, "no learned-size trials", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("layer (depth)")
    ax.set_ylabel("learned kernel size (px, mean of h and w)")
    ax.set_title("Learned kernel size per layer (dashed: at initialisation)")
    if lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"{len(lines)} trial(s): " + ", ".join(lines) if lines else "no learned-size trials with recorded sizes"


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
    ax.set_xlabel("FLOPs per sample (FFTs counted)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against compute")
    if len(ok):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return ", ".join(f"{r['params_conv']} {r['trial_id']}" for _, r in front.iterrows()) if len(front) else "-"


def _grid_vs_learned(df, metric: str, way: str, path: Path) -> list[dict[str, Any]]:
    plt = _plt()
    ok = df[df[metric].notna()]
    best = []
    for conv, group in ok.groupby("params_conv"):
        row = group.sort_values(metric, ascending=way == "min").iloc[0]
        best.append({"conv": str(conv), "trial_id": row["trial_id"], metric: float(row[metric]),
                     "flops": float(row["flops"]) if row["flops"] == row["flops"] else float("nan"),
                     "params": int(row["params"]) if row["params"] is not None and row["params"] == row["params"]
                     else 0, "trials": len(group), "kind": "grid" if conv in FIXED_SIZE_METHODS else "learned"})
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    names = [b["conv"] for b in best]
    colors = ["tab:gray" if b["kind"] == "grid" else "tab:blue" for b in best]
    for ax, key, label in zip(axes, (metric, "flops", "params"), (f"best {metric}", "FLOPs (best trial)",
                                                                   "parameters (best trial)")):
        ax.bar(names, [b[key] for b in best], color=colors)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.suptitle("grid (gray) against learned (blue) kernel sizes, by method", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return best


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
        trial_id: instead, export this trial first into ``out/export_<trial_id>`` (this **retrains** it from its
            config: search trials keep no weights) and plot its kernels.
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
    done = df[df["status"] == "completed"]
    lines = [f"# nas_flex report: {lb.path}", "",
             f"{len(df)} trials ({len(done)} completed), ranked by `{metric}` ({way}).", ""]

    sizes_note = _sizes_vs_depth(done, metric, out / "sizes_vs_depth.png", top)
    lines += ["## Learned kernel size per layer", "", "![learned sizes](sizes_vs_depth.png)", "",
              f"Best learned-size trials: {sizes_note}.", ""]
    front_note = _acc_vs_flops(lb, done, metric, out / "acc_vs_flops.png")
    lines += ["## Accuracy against compute", "", "![accuracy against FLOPs](acc_vs_flops.png)", "",
              f"Pareto front ({metric} {way}, flops min): {front_note}.", ""]
    best = _grid_vs_learned(done, metric, way, out / "grid_vs_learned.png")
    lines += ["## Grid against learned", "", "![grid against learned](grid_vs_learned.png)", "",
              f"| method | kind | trials | best trial | {metric} | MFLOPs | params |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {b['conv']} | {b['kind']} | {b['trials']} | {b['trial_id']} | {b[metric]:.4f} | "
              f"{b['flops'] / 1e6:.3f} | {b['params']} |" for b in best]
    lines.append("")

    lines += ["## Kernels", ""]
    if trial_id is not None and export_dir is None:
        from nas_flex.export import export_trial

        export_dir = out / f"export_{trial_id}"
        log(f"exporting trial {trial_id} (retrained from its config) into {export_dir} for the kernel figure")
        export_trial(lb, trial_id, export_dir, log=log)
    if export_dir is not None:
        note = _kernels(Path(export_dir), layer, out / "kernels.png")
        lines += ["![kernels](kernels.png)", "", f"Kernels of {note}, from the export in `{export_dir}`: top the "
                  "spatial kernel (frequency layers: the circular kernel, centred), bottom its magnitude spectrum.",
                  ""]
    else:
        lines += ["Skipped: no trained weights. Search trials keep none; pass `--trial ID` (retrains that trial "
                  "from its config) or `--export DIR` (an existing `nas-flex export` folder).", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    log(f"report written to {report}")
    return report
