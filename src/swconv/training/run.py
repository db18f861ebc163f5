"""What train.py / eval.py do, kept out of the entry points so tests can call it directly."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from .module import ClassificationModule

log = logging.getLogger("swconv")


# ------------------------------------------------------------------------------------- helpers
def extras(cfg: DictConfig) -> None:
    ex = cfg.get("extras") or {}
    if ex.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if ex.get("print_config") and _rank_zero():
        print_config_tree(cfg)


def _rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def print_config_tree(cfg: DictConfig) -> None:
    try:
        import rich
        from rich.syntax import Syntax
        from rich.tree import Tree
    except ImportError:  # pragma: no cover
        print(OmegaConf.to_yaml(cfg, resolve=False))
        return
    tree = Tree("CONFIG", style="dim")
    for key in cfg:
        if key in ("hydra",):
            continue
        branch = tree.add(str(key), style="bold")
        val = cfg[key]
        text = OmegaConf.to_yaml(val, resolve=False) if isinstance(val, DictConfig) else str(val)
        branch.add(Syntax(text, "yaml"))
    rich.print(tree)


def instantiate_list(cfg: DictConfig | None) -> list:
    out = []
    if not cfg:
        return out
    for _, c in cfg.items():
        if isinstance(c, DictConfig) and "_target_" in c:
            out.append(instantiate(c))
    return out


def build_module(cfg: DictConfig) -> ClassificationModule:
    mod = OmegaConf.to_container(cfg.get("module") or {}, resolve=True)
    return ClassificationModule(
        model=cfg.model,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler"),
        num_classes=int(cfg.data.num_classes),
        **mod,
    )


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    callbacks = instantiate_list(cfg.get("callbacks"))
    sp = cfg.get("sparsity")
    if sp is not None and sp.get("callback") is not None:
        callbacks.append(instantiate(sp.callback))
    return callbacks


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _scalars(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def _resolve_ckpt(ckpt: str | None, cfg: DictConfig) -> str | None:
    if ckpt in (None, "", "null"):
        return None
    if ckpt == "last":
        p = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not p.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but {p} does not exist; pass the path of a "
                f"checkpoint or hydra.run.dir=<run dir of the interrupted run>"
            )
        return str(p)
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"ckpt_path='{ckpt}' does not exist")
    return ckpt


# --------------------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Seed, instantiate, fit, test the best checkpoint. Returns (metrics, objects)."""
    t0 = time.time()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = build_module(cfg)
    callbacks = build_callbacks(cfg)
    loggers: list[Logger] = instantiate_list(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    for lg in trainer.loggers:
        lg.log_hyperparams(
            {
                "cfg": {
                    k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
                    for k in cfg
                    if k != "hydra"
                }
            }
        )
    ckpt = _resolve_ckpt(cfg.get("ckpt_path"), cfg)

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
    metrics = _scalars(trainer.callback_metrics)

    best = None
    if cfg.get("test", True):
        cb = trainer.checkpoint_callback
        best = cb.best_model_path if cb is not None and cb.best_model_path else None
        if best is None:
            log.warning("no best checkpoint: testing the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=False)
        metrics.update(_scalars(trainer.callback_metrics))
    metrics["time/total_s"] = time.time() - t0
    objects = dict(cfg=cfg, datamodule=datamodule, model=model, trainer=trainer, best_ckpt=best)
    if trainer.is_global_zero:
        _finish(cfg, trainer, metrics, best)
    return metrics, objects


def _finish(cfg: DictConfig, trainer: L.Trainer, metrics: dict, best: str | None) -> None:
    out = Path(cfg.paths.output_dir)
    csv = next((Path(lg.log_dir) / "metrics.csv" for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    png = None
    if csv is not None and csv.is_file():
        from .plots import plot_training_curves

        try:
            png = plot_training_curves(
                csv, out / "training_curves.png", title=f"{cfg.model.name} on {Path(str(cfg.data._target_)).suffix[1:]}"
            )
        except Exception as e:  # plotting must never fail a finished run
            log.warning(f"could not plot training curves: {e}")
    cb = trainer.checkpoint_callback
    last = Path(cb.dirpath) / "last.ckpt" if cb is not None and cb.dirpath else None
    summary = {
        "metrics": metrics,
        "best_checkpoint": best,
        "last_checkpoint": str(last) if last and last.is_file() else None,
        "metrics_csv": str(csv) if csv and csv.is_file() else None,
        "training_curves": str(png) if png else None,
        "run_dir": str(out),
        "model": cfg.model.name,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    lines = ["", "=" * 72, f"swconv train finished in {metrics['time/total_s']:.1f} s  (run dir {out})"]
    for k in ("test/acc", "test/acc5", "test/ema_acc", "val/acc_best"):
        if k in metrics:
            lines.append(f"  {k:<18} {metrics[k]:.4f}")
    lines += [
        f"  best checkpoint    {best}",
        f"  last checkpoint    {summary['last_checkpoint']}",
        f"  metrics CSV        {summary['metrics_csv']}",
        f"  training curves    {summary['training_curves']}",
        f"  summary JSON       {out / 'train_summary.json'}",
    ]
    if best:
        lines.append(f"  evaluate with:     make eval CKPT={best}")
    lines.append("=" * 72)
    print("\n".join(lines), flush=True)


def get_metric_value(metrics: dict, name: str | None) -> float | None:
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric '{name}' not among the logged metrics {sorted(metrics)}")
    return float(metrics[name])


# ---------------------------------------------------------------------------------------- eval
class CheckpointMismatchError(ValueError):
    pass


def load_checkpoint_module(ckpt_path: str, cfg: DictConfig) -> tuple[ClassificationModule, dict]:
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path='{ckpt_path}' does not exist")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters")
    if not hp or "model" not in hp:
        raise CheckpointMismatchError(f"{ckpt_path} is not a swconv training checkpoint (no hyper_parameters.model)")
    ckpt_model = hp["model"]
    want = cfg.model.name
    if ckpt_model["name"] != want:
        raise CheckpointMismatchError(
            f"checkpoint {ckpt_path} holds model '{ckpt_model['name']}' but the config selects "
            f"model={want}; run eval.py model={ckpt_model['name']} ckpt_path=... (plus the data / "
            f"experiment options it was trained with)"
        )
    hp = dict(hp)
    hp["compile"] = False
    module = ClassificationModule(**hp)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointMismatchError(
            f"checkpoint {ckpt_path} does not fit model '{want}' with kwargs {ckpt_model.get('kwargs')}: {e}"
        ) from e
    return module, ckpt


def evaluate(cfg: DictConfig) -> tuple[dict, dict]:
    """Evaluate cfg.ckpt_path on the configured data; write eval_report.json into the run dir."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    ckpt_path = str(cfg.ckpt_path)
    module, ckpt = load_checkpoint_module(ckpt_path, cfg)
    data_classes = int(cfg.data.num_classes)
    if data_classes != module.num_classes:
        raise CheckpointMismatchError(
            f"checkpoint has {module.num_classes} classes, data {cfg.data._target_} has {data_classes}"
        )
    datamodule = instantiate(cfg.data)
    loggers = instantiate_list(cfg.get("logger"))
    trainer = build_trainer(cfg, instantiate_list(cfg.get("callbacks")), loggers)
    split = cfg.get("split", "test")
    if split == "test":
        res = trainer.test(module, datamodule=datamodule)
    elif split == "val":
        res = trainer.validate(module, datamodule=datamodule)
    else:
        raise ValueError(f"split must be test or val, got {split!r}")
    metrics = {k: float(v) for d in res for k, v in d.items()}
    report = {
        "metrics": metrics,
        "split": split,
        "model": ckpt["hyper_parameters"]["model"],
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "checkpoint": {
            "path": str(Path(ckpt_path).resolve()),
            "sha256": file_sha256(ckpt_path),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
        },
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
    }
    out = Path(cfg.paths.output_dir) / "eval_report.json"
    if trainer.is_global_zero:
        out.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nswconv eval: {json.dumps(metrics)}\n  report: {out}", flush=True)
    return metrics, dict(report=report, report_path=out, trainer=trainer)
