"""Training-curve PNG from a Lightning CSVLogger ``metrics.csv``."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value), ...]} from a CSVLogger file (empty cells skipped)."""
    series: dict[str, list] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = float(row.get("step") or 0)
            for k, v in row.items():
                if k in ("step", "epoch") or v in (None, ""):
                    continue
                try:
                    series[k].append((step, float(v)))
                except ValueError:
                    pass
    return dict(series)


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path, title: str | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = read_metrics_csv(metrics_csv)
    if not s:
        return None
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("train/loss", "train/loss_epoch", "val/loss", "val/ema_loss"):
        if key in s:
            xs, ys = zip(*s[key])
            ax_l.plot(
                xs,
                ys,
                label=key,
                alpha=0.5 if key == "train/loss" else 1.0,
                marker=None if key == "train/loss" else "o",
            )
    ax_l.set_xlabel("optimizer step")
    ax_l.set_ylabel("loss")
    ax_l.set_yscale("log")
    for key in ("train/acc", "val/acc", "val/ema_acc", "test/acc"):
        if key in s:
            xs, ys = zip(*s[key])
            ax_a.plot(xs, ys, label=key, marker="o")
    ax_a.set_xlabel("optimizer step")
    ax_a.set_ylabel("top-1 accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
