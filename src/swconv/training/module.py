"""LightningModule for image classification with a timm-registered network (SPEC §7 recipe)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from copy import deepcopy
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .params import param_groups_weight_decay
from .registry import create_model


def _plain(x):
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else deepcopy(x)


def _rng_state() -> dict:
    """RNG states as tensors / plain Python (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ClassificationModule(L.LightningModule):
    """Args (all plain data, saved as hyper-parameters so a checkpoint is self-describing):
    model: ``{name, kwargs}`` for ``timm.create_model`` (after ``import swconv.models``).
    optimizer: instantiable partial optimizer config (``_target_``, ``_partial_: true``, lr,
        weight_decay, ...). Groups: no decay for 1-D params and ``*.bias``.
    scheduler: instantiable partial ``f(optimizer, total_steps, steps_per_epoch)`` returning
        a per-step scheduler, or None.
    num_classes: for the metrics and mixup targets.
    label_smoothing: CE label smoothing (folded into the mixup targets when mixup is on).
    mixup: kwargs of ``timm.data.Mixup`` (mixup_alpha, cutmix_alpha, prob, switch_prob, mode)
        or None; active -> SoftTargetCrossEntropy.
    ema: ``{decay, warmup, evaluate}`` (timm ModelEmaV3) or None; with evaluate the EMA
        weights are validated/tested alongside (``val/ema_acc``, ...).
    channels_last / compile: memory format and ``torch.compile`` (bool or kwargs).
    filter_bias_and_bn: apply the no-decay rule (SPEC §7).
    """

    def __init__(
        self,
        model: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        num_classes: int = 1000,
        label_smoothing: float = 0.0,
        mixup: Mapping | None = None,
        ema: Mapping | None = None,
        channels_last: bool = False,
        compile: Any = False,
        filter_bias_and_bn: bool = True,
        top_k: int = 5,
    ):
        super().__init__()
        model, optimizer, scheduler, mixup, ema, compile = map(
            _plain, (model, optimizer, scheduler, mixup, ema, compile)
        )
        self.save_hyperparameters(
            {
                "model": model,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "num_classes": num_classes,
                "label_smoothing": label_smoothing,
                "mixup": mixup,
                "ema": ema,
                "channels_last": channels_last,
                "compile": compile,
                "filter_bias_and_bn": filter_bias_and_bn,
                "top_k": top_k,
            }
        )
        self.net = create_model(model["name"], model.get("kwargs"))
        self.num_classes = int(num_classes)
        self.channels_last = bool(channels_last)

        self.mixup_fn = None
        if (
            mixup
            and (
                mixup.get("mixup_alpha", 0) > 0
                or mixup.get("cutmix_alpha", 0) > 0
                or mixup.get("cutmix_minmax") is not None
            )
            and mixup.get("prob", 1.0) > 0
        ):
            from timm.data import Mixup

            self.mixup_fn = Mixup(label_smoothing=label_smoothing, num_classes=num_classes, **mixup)
        self.train_loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.eval_loss_fn = nn.CrossEntropyLoss()

        self.ema = None
        self.ema_evaluate = False
        if ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(
                self.net, decay=float(ema.get("decay", 0.9999)), use_warmup=bool(ema.get("warmup", False))
            )
            self.ema_evaluate = bool(ema.get("evaluate", True))
            # the EMA copy is in eval mode on purpose (it is never trained)
            import warnings

            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")

        k = min(int(top_k), num_classes)
        self.top_k = k
        acc = lambda kk: MulticlassAccuracy(num_classes=num_classes, top_k=kk, average="micro")
        self.train_acc = acc(1)
        self.train_loss = MeanMetric()
        self.metrics = nn.ModuleDict()
        for stage in ("val", "test"):
            for prefix in ("", "ema_") if self.ema_evaluate else ("",):
                self.metrics[f"{stage}_{prefix}acc"] = acc(1)
                self.metrics[f"{stage}_{prefix}acc{k}"] = acc(k)
                self.metrics[f"{stage}_{prefix}loss"] = MeanMetric()
        self.val_acc_best = MaxMetric()
        self._compiled = None
        self._pending_rng = None

    # --------------------------------------------------------------- forward
    def configure_model(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
            if self.ema is not None:
                self.ema.to(memory_format=torch.channels_last)
        opts = self.hparams.compile
        if opts and self._compiled is None:
            kwargs = opts if isinstance(opts, dict) else {}
            # kept out of the module tree so state_dict keys stay "net.*"
            object.__setattr__(self, "_compiled", torch.compile(self.net, **kwargs))

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prep(x)
        return (self._compiled or self.net)(x)

    # -------------------------------------------------------------- training
    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity-check values

    def training_step(self, batch, batch_idx: int):
        x, y = batch
        if self.mixup_fn is not None and x.shape[0] % 2 == 0:
            x, y_soft = self.mixup_fn(x, y)
            logits = self(x)
            loss = torch.sum(-y_soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self(x)
            loss = self.train_loss_fn(logits.float(), y)
            if self.mixup_fn is None:
                self.train_acc(logits, y)
                self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.train_loss(loss.detach())
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.net, step=self.global_step)

    # ------------------------------------------------------------ evaluation
    def _eval_step(self, stage: str, batch) -> None:
        x, y = batch
        nets = [("", self)]
        if self.ema_evaluate:
            nets.append(("ema_", lambda t: self.ema.module(self._prep(t))))
        for prefix, fn in nets:
            logits = fn(x)
            loss = self.eval_loss_fn(logits.float(), y)
            m = self.metrics
            m[f"{stage}_{prefix}loss"](loss)
            m[f"{stage}_{prefix}acc"](logits, y)
            m[f"{stage}_{prefix}acc{self.top_k}"](logits, y)
            bar = stage == "val" and prefix == ""
            self.log(f"{stage}/{prefix}loss", m[f"{stage}_{prefix}loss"], on_epoch=True, prog_bar=bar)
            self.log(f"{stage}/{prefix}acc", m[f"{stage}_{prefix}acc"], on_epoch=True, prog_bar=bar)
            self.log(f"{stage}/{prefix}acc{self.top_k}", m[f"{stage}_{prefix}acc{self.top_k}"], on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        acc = self.metrics["val_acc"].compute()
        if self.ema_evaluate:
            acc = torch.maximum(acc, self.metrics["val_ema_acc"].compute())
        if not self.trainer.sanity_checking:
            self.val_acc_best(acc)
        self.log(
            "val/acc_best",
            self.val_acc_best.compute() if self.val_acc_best.update_called else acc,
            sync_dist=True,
            prog_bar=True,
        )

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    # ------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        cfg = dict(self.hparams.optimizer)
        wd = float(cfg.get("weight_decay", 0.0))
        if self.hparams.filter_bias_and_bn:
            params = param_groups_weight_decay(self.net, wd)
        else:
            params = [{"params": [p for p in self.net.parameters() if p.requires_grad], "name": "all"}]
        optimizer = instantiate(cfg)(params)
        if not self.hparams.scheduler:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if (self.trainer.max_epochs or -1) > 0 else None
        steps_per_epoch = total / epochs if epochs else float(total)
        sched_cfg = dict(self.hparams.scheduler)
        interval = sched_cfg.pop("interval", "step")
        scheduler = instantiate(sched_cfg)(optimizer, total_steps=total, steps_per_epoch=steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval, "frequency": 1}}

    # ------------------------------------------------- checkpoint: RNG, identity
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = _rng_state()
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        ):
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint["rng_states"] = states  # one per rank
        checkpoint["swconv_model"] = deepcopy(self.hparams.model)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            rank = self.global_rank if self._trainer is not None else 0
            self._pending_rng = states[rank] if rank < len(states) else states[0]

    def _apply_pending_rng(self) -> None:
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_epoch_start(self) -> None:
        self._apply_pending_rng()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._apply_pending_rng()
