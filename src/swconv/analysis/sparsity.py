"""Sparsity report for kernel-granular masks (SPEC §3.5; paper Table 2 / Figure 6).

From a checkpoint (Lightning ``.ckpt`` or a plain state_dict) or a live module:
- per-layer table: per-path density, union density (a kernel counts if active in any path; this is
  the effective density after ``merge_paths``), intersection density, fully pruned channels;
- histogram of "active small kernels per channel" (union over paths), per stage and overall.

Writes ``sparsity_report.json`` and ``sparsity_report.png``.

CLI: ``python -m swconv.analysis.sparsity ckpt=PATH [out=DIR] [exclude=REGEX]`` (``--ckpt`` etc. also
work). Masks of EMA copies (``ema.`` / ``model_ema.`` prefixes) are left out by default.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

_STAGE = re.compile(r"stages\.(\d+)\.")


def _strip(name: str) -> str:
    return name[: -len(".kernel_mask")] if name.endswith(".kernel_mask") else name


DEFAULT_EXCLUDE = r"(^|\.)(ema|model_ema|ema_model)\."  # EMA copies mirror the trained masks


def collect_masks(
    state_dict: Mapping[str, torch.Tensor], exclude: str | None = DEFAULT_EXCLUDE
) -> OrderedDict[str, dict]:
    """``{layer: {"mask": (n_path, rep*nk) bool, "rep": rep, "nk": nk}}`` for every ``*.kernel_mask``
    whose name does not match ``exclude``."""
    out: OrderedDict[str, dict] = OrderedDict()
    pat = re.compile(exclude) if exclude else None
    for k, v in state_dict.items():
        if not k.endswith("kernel_mask") or not isinstance(v, torch.Tensor):
            continue
        if pat is not None and pat.search(k):
            continue
        layer = _strip(k)
        mask = v.detach().float().cpu() > 0
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        rep_idx = state_dict.get(f"{layer}.rep_index")
        rep = int(rep_idx.numel()) if isinstance(rep_idx, torch.Tensor) else None
        n = mask.shape[1]
        if not rep or n % rep:
            rep = n  # layout unknown: one kernel per "channel"
        out[layer] = {"mask": mask, "rep": rep, "nk": n // rep}
    return out


def layer_table(masks: Mapping[str, dict]) -> list[dict[str, Any]]:
    rows = []
    for name, d in masks.items():
        m, rep, nk = d["mask"], d["rep"], d["nk"]
        union = m.any(0)
        inter = m.all(0)
        per_ch = union.view(rep, nk).sum(1)
        rows.append(
            {
                "layer": name,
                "rep_channels": rep,
                "n_slots": nk,
                "n_path": int(m.shape[0]),
                "kernels": int(m.shape[1]),
                "density_per_path": [round(float(x), 6) for x in m.float().mean(1)],
                "density_union": round(float(union.float().mean()), 6),
                "density_intersection": round(float(inter.float().mean()), 6),
                "fully_pruned_channels": int((per_ch == 0).sum()),
            }
        )
    return rows


def active_per_channel_histograms(masks: Mapping[str, dict]) -> dict[str, dict[str, Any]]:
    """Counts of channels by number of active (union) small kernels, grouped by stage."""
    groups: dict[str, list[torch.Tensor]] = OrderedDict()
    nks: dict[str, int] = {}
    for name, d in masks.items():
        mt = _STAGE.search(name + ".")
        key = f"stage{int(mt.group(1)) + 1}" if mt else f"nk{d['nk']}"
        per_ch = d["mask"].any(0).view(d["rep"], d["nk"]).sum(1)
        groups.setdefault(key, []).append(per_ch)
        nks[key] = max(nks.get(key, 0), d["nk"])
    out = {}
    for key, lst in groups.items():
        allc = torch.cat(lst)
        nk = nks[key]
        counts = torch.bincount(allc, minlength=nk + 1)[: nk + 1]
        out[key] = {
            "n_slots": nk,
            "channels": int(allc.numel()),
            "counts": [int(c) for c in counts],
            "fraction": [round(float(c) / max(allc.numel(), 1), 6) for c in counts],
            "mean_active": round(float(allc.float().mean()), 4),
        }
    return out


def build_report(
    state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None, exclude: str | None = DEFAULT_EXCLUDE
) -> dict[str, Any]:
    masks = collect_masks(state_dict, exclude)
    rows = layer_table(masks)
    tot = sum(r["kernels"] * r["n_path"] for r in rows)
    act = sum(sum(r["density_per_path"]) * r["kernels"] for r in rows)
    tot_u = sum(r["kernels"] for r in rows)
    act_u = sum(r["density_union"] * r["kernels"] for r in rows)
    return {
        "meta": dict(meta or {}),
        "overall": {
            "layers": len(rows),
            "density_paths": round(act / tot, 6) if tot else None,
            "density_union": round(act_u / tot_u, 6) if tot_u else None,
        },
        "layers": rows,
        "active_kernels_per_channel": active_per_channel_histograms(masks),
    }


def format_table(report: Mapping[str, Any]) -> str:
    lines = [
        f"{'layer':<40s} {'rep':>5s} {'nk':>3s} {'per-path density':>22s} {'union':>7s} {'inter':>7s} {'dead ch':>7s}"
    ]
    for r in report["layers"]:
        pp = " ".join(f"{x:.3f}" for x in r["density_per_path"])
        lines.append(
            f"{r['layer']:<40s} {r['rep_channels']:>5d} {r['n_slots']:>3d} {pp:>22s} "
            f"{r['density_union']:>7.3f} {r['density_intersection']:>7.3f} {r['fully_pruned_channels']:>7d}"
        )
    o = report["overall"]
    lines.append(
        f"overall: {o['layers']} layers, density (paths) {o['density_paths']}, "
        f"density (union/merged) {o['density_union']}"
    )
    return "\n".join(lines)


def plot_report(report: Mapping[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    hists = report["active_kernels_per_channel"]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.28 * len(rows) + 3), 8))
    ax = axes[0]
    xs = range(len(rows))
    n_path = max((r["n_path"] for r in rows), default=1)
    for q in range(n_path):
        ax.plot(
            xs,
            [r["density_per_path"][q] if q < r["n_path"] else float("nan") for r in rows],
            "o-",
            ms=3,
            lw=1,
            label=f"path {q}",
        )
    ax.bar(xs, [r["density_union"] for r in rows], color="0.8", label="union (merged)")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("density")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(
        [r["layer"].replace("stages.", "s").replace(".large_kernel", "") for r in rows], rotation=90, fontsize=6
    )
    ax.legend(fontsize=7)
    ax.set_title(f"per-layer kernel density (overall {report['overall']['density_union']})")
    ax = axes[1]
    width = 0.8 / max(len(hists), 1)
    for i, (key, h) in enumerate(hists.items()):
        shift = (i - (len(hists) - 1) / 2) * width
        ax.bar(
            [x + shift for x in range(len(h["fraction"]))],
            h["fraction"],
            width=width,
            label=f"{key} (nk={h['n_slots']}, mean {h['mean_active']})",
        )
    ax.set_xlabel("active small kernels per channel (union over paths)")
    ax.set_ylabel("fraction of channels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    state_dict: Mapping[str, torch.Tensor],
    out_dir: str,
    meta: Mapping[str, Any] | None = None,
    plot: bool = True,
    exclude: str | None = DEFAULT_EXCLUDE,
) -> dict[str, Any]:
    os.makedirs(out_dir, exist_ok=True)
    report = build_report(state_dict, meta, exclude)
    with open(os.path.join(out_dir, "sparsity_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    if plot and report["layers"]:
        plot_report(report, os.path.join(out_dir, "sparsity_report.png"))
    return report


def load_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # Lightning checkpoints may hold config objects; the file is the user's own
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    meta: dict[str, Any] = {"checkpoint": os.path.basename(path)}
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        for k in ("epoch", "global_step"):
            if k in ckpt:
                meta[k] = ckpt[k]
        for k, v in (ckpt.get("callbacks") or {}).items():
            if "SparsityCallback" in str(k) and isinstance(v, dict):
                meta["sparsity_callback"] = {
                    kk: v[kk] for kk in ("step", "round", "seed", "total_steps", "prune_rate_now", "config") if kk in v
                }
        sd = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        sd = ckpt["model"]
    else:
        sd = ckpt
    return sd, meta


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [f"--{a}" if re.match(r"^[a-z_]+=", a) else a for a in argv]  # hydra-style key=value
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint or state_dict file")
    p.add_argument("--out", default=None, help="output folder (default: <ckpt dir>/sparsity_report)")
    p.add_argument("--exclude", default=DEFAULT_EXCLUDE, help="regex of mask names to leave out ('' = none)")
    p.add_argument("--no_plot", action="store_true")
    a = p.parse_args(argv)
    sd, meta = load_checkpoint(a.ckpt)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.ckpt)), "sparsity_report")
    report = write_report(sd, out, meta, plot=not a.no_plot, exclude=a.exclude or None)
    if not report["layers"]:
        print("no kernel_mask buffers found in the checkpoint", file=sys.stderr)
        return 1
    print(format_table(report))
    print(f"wrote {os.path.join(out, 'sparsity_report.json')}" + ("" if a.no_plot else " and .png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
