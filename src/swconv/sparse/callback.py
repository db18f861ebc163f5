"""Lightning callback driving kernel-granular dynamic sparsity (SPEC §3, better per §13).

Step hook: a ``register_step_post_hook`` on the torch optimizer(s) that own SW weights. torch calls
it only when ``optimizer.step`` really runs: once per optimizer step under gradient accumulation
(Lightning steps once per accumulation window) and never for a step that an fp16 ``GradScaler``
skips (``GradScaler.step`` does not call ``optimizer.step`` when it found inf/NaN). Fused optimizers
that unscale inside ``step`` get their ``found_inf`` flag checked instead.

Per step: ``weights *= masks`` with one ``torch._foreach_mul_`` (no host sync). Every
``update_frequency`` real steps: one prune/regrow round (scores gathered to the host once),
masks written into the ``kernel_mask`` buffers in place, a checksum all-reduced under DDP.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # Lightning 2.x unified package, fall back to pytorch_lightning
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities import rank_zero_info
except ImportError:  # pragma: no cover
    import pytorch_lightning as pl  # type: ignore
    from pytorch_lightning.callbacks import Callback  # type: ignore
    from pytorch_lightning.utilities import rank_zero_info  # type: ignore

from . import masks as M
from .schedule import make_schedule

INITS = ("snip", "erk", "uniform", "dense")
GROWTHS = ("random", "gradient", "none")
PRUNES = ("magnitude",)


class SparsityMismatchError(RuntimeError):
    """Raised when DDP ranks disagree on the masks (checksum mismatch)."""


class SparsityCallback(Callback):
    """Dynamic kernel-granular sparsity for ``ShiftWiseConv2d`` layers.

    Args (defaults = the reference README run, SPEC §3):
        density: global target density of the large-kernel small kernels (1 - sparsity).
        init: layer-density rule: ``snip`` (one batch, global threshold), ``erk``, ``uniform``, ``dense``.
        placement: ``bernoulli`` (reference: each kernel kept with prob = layer density) or ``exact``.
        prune: ``magnitude`` (sum of |w| per small kernel).
        growth: ``random`` (reference), ``gradient`` (RigL-style, dense gradient of the round step), ``none``.
        prune_rate / final_prune_rate / schedule: cosine 0.3 -> 0.005 over ``total_steps``.
        update_frequency: optimizer steps between rounds; ``0``/``None`` = static masks (no rounds).
        total_steps: schedule length; ``None`` = ``trainer.estimated_stepping_batches``.
        sparse_gap: every how many rounds the paths are re-aligned (path-0 mask from summed
            magnitudes, copied to the other paths); ``0``/``None`` = never.
        dense_threshold: layers whose initial realised density >= this stay dense forever.
        include: optional regex on module names selecting SW layers (default: all of them).
        erk_power_scale: ERK exponent.
        mask_grads: zero gradients of pruned kernels before each step (reference: no; gradients of
            kernels pruned on every path are zero anyway because the mask is in the forward).
        mask_optimizer_state: which optimizer state of pruned kernels is zeroed after each step:
            ``reference`` (SGD ``momentum_buffer`` only, as the reference; AdamW moments untouched),
            ``all`` (every per-parameter state tensor of the weight's shape, e.g. ``exp_avg`` and
            ``exp_avg_sq``), ``none``. Booleans map to ``all`` / ``none``.
        seed: seed of the per-round generators; ``None`` = ``PL_GLOBAL_SEED`` or 0.
        check_ranks: all-reduce a mask checksum at init and each round under DDP, raise on mismatch.
        log_densities: log per-layer densities at each round.
        verbose: print the per-layer "before -> after" table at each round (rank 0).
        report: at the end of fit, rank 0 writes ``sparsity_report.{json,png}`` (see
            ``swconv.analysis.sparsity``) into ``report_dir`` (default ``<default_root_dir>/sparsity``).
    """

    def __init__(
        self,
        density: float = 0.7,
        init: str = "snip",
        placement: str = "bernoulli",
        prune: str = "magnitude",
        growth: str = "random",
        prune_rate: float = 0.3,
        final_prune_rate: float = 0.005,
        schedule: str = "cosine",
        update_frequency: int | None = 100,
        total_steps: int | None = None,
        sparse_gap: int | None = 131,
        dense_threshold: float = 0.99,
        include: str | None = None,
        erk_power_scale: float = 1.0,
        mask_grads: bool = False,
        mask_optimizer_state: str | bool = "reference",
        seed: int | None = None,
        check_ranks: bool = True,
        log_densities: bool = True,
        verbose: bool = True,
        report: bool = False,
        report_dir: str | None = None,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if growth not in GROWTHS:
            raise ValueError(f"growth must be one of {GROWTHS}, got {growth!r}")
        if prune not in PRUNES:
            raise ValueError(f"prune must be one of {PRUNES}, got {prune!r}")
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        self.density = float(density)
        self.init = init
        self.placement = placement
        self.prune = prune
        self.growth = growth
        self.prune_rate = float(prune_rate)
        self.final_prune_rate = float(final_prune_rate)
        self.schedule_name = schedule
        self.update_frequency = int(update_frequency or 0)
        self.sparse_gap = int(sparse_gap or 0)
        self.dense_threshold = float(dense_threshold)
        self.include = include
        self.erk_power_scale = float(erk_power_scale)
        self.mask_grads = bool(mask_grads)
        if isinstance(mask_optimizer_state, bool):
            mask_optimizer_state = "all" if mask_optimizer_state else "none"
        if mask_optimizer_state not in ("reference", "all", "none"):
            raise ValueError(f"mask_optimizer_state must be reference|all|none, got {mask_optimizer_state!r}")
        self.mask_optimizer_state = mask_optimizer_state
        self.check_ranks = bool(check_ranks)
        self.log_densities = bool(log_densities)
        self.verbose = bool(verbose)
        self.report = bool(report)
        self.report_dir = report_dir

        # ---- checkpointed state
        self.seed = int(seed) if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.total_steps: int | None = int(total_steps) if total_steps else None
        self.step = 0  # completed (non-skipped) optimizer steps
        self.round = 0  # completed prune/regrow rounds
        self.initialized = False
        self.masked_layers: list[str] = []  # names of SW layers under masking (others stay dense)
        self.layer_densities: dict[str, float] = {}  # target densities from init
        self.n_skipped = 0  # fused-optimizer steps skipped by GradScaler (informational)

        # ---- runtime
        self._layers: list[tuple[str, nn.Module]] = []
        self._handles: list[Any] = []
        self._counting_opt: torch.optim.Optimizer | None = None
        self._weights: list[Tensor] = []
        self._mask_views: list[Tensor] = []
        self._state_pairs: list[tuple[Tensor, Tensor]] = []
        self._state_scanned = False
        self._dense_saved: list[Tensor] | None = None  # gradient growth: real masks during dense step
        self._pending_log: dict[str, float] = {}
        self._shadows: list[tuple[nn.Module, nn.Module]] = []  # (shadow layer, trained layer)
        self._shadow_step = -1
        self.n_applies = 0  # number of mask applications (tests/diagnostics)

    # ------------------------------------------------------------------ helpers
    @property
    def rounds_enabled(self) -> bool:
        return self.update_frequency > 0 and self.init != "dense"

    def schedule(self):
        return make_schedule(self.schedule_name, self.prune_rate, self.final_prune_rate, self.total_steps or 1)

    def current_prune_rate(self) -> float:
        return self.schedule()(self.step)

    def _masked(self) -> list[tuple[str, nn.Module]]:
        names = set(self.masked_layers)
        return [(n, m) for n, m in self._layers if n in names]

    def _rebuild_cache(self) -> None:
        """Views of weights and masks for the fused per-step multiply (rebuilt after device moves)."""
        self._weights, self._mask_views = [], []
        for _, layer in self._masked():
            for q, p in enumerate(layer.paths):
                self._weights.append(p.weight)
                self._mask_views.append(layer.kernel_mask[q].view(-1, 1, 1, 1))
        self._state_pairs = []
        opt = self._counting_opt
        self._state_scanned = opt is not None and any(w in opt.state for w in self._weights)
        if self.mask_optimizer_state != "none" and opt is not None:
            for w, m in zip(self._weights, self._mask_views):
                st = self._counting_opt.state.get(w, {})
                for key, v in st.items():
                    if not (isinstance(v, Tensor) and v.shape == w.shape):
                        continue
                    if self.mask_optimizer_state == "all" or key == "momentum_buffer":
                        self._state_pairs.append((v, m))

    @torch.no_grad()
    def apply_masks(self) -> None:
        """weights *= masks (and optionally optimizer state). No host synchronisation."""
        if not self._weights:
            return
        torch._foreach_mul_(self._weights, self._mask_views)
        if self.mask_optimizer_state != "none":
            if not self._state_scanned:
                self._rebuild_cache()  # state tensors appear after the first step / after a resume
            if self._state_pairs:
                torch._foreach_mul_([s for s, _ in self._state_pairs], [m for _, m in self._state_pairs])
        self.n_applies += 1

    @torch.no_grad()
    def sync_shadows(self) -> None:
        """Copy masks into shadow layers (e.g. an EMA copy) and zero their pruned weights."""
        self._shadow_step = self.step
        if not self._shadows:
            return
        torch._foreach_copy_([s.kernel_mask for s, _ in self._shadows], [o.kernel_mask for _, o in self._shadows])
        ws, ms = [], []
        for s, _ in self._shadows:
            for q, c in enumerate(s.paths):
                ws.append(c.weight.data)
                ms.append(s.kernel_mask[q].view(-1, 1, 1, 1))
        torch._foreach_mul_(ws, ms)

    @torch.no_grad()
    def _mask_gradients(self) -> None:
        grads, ms = [], []
        for w, m in zip(self._weights, self._mask_views):
            if w.grad is not None:
                grads.append(w.grad)
                ms.append(m)
        if grads:
            torch._foreach_mul_(grads, ms)

    # ------------------------------------------------------------------ optimizer hooks
    def _pre_step(self, optimizer, args, kwargs) -> None:
        if self.mask_grads and optimizer is self._counting_opt:
            self._mask_gradients()

    def _post_step(self, optimizer, args, kwargs) -> None:
        if optimizer is not self._counting_opt:
            return
        found_inf = getattr(optimizer, "found_inf", None)  # fused optimizers under GradScaler
        if isinstance(found_inf, Tensor):  # set by GradScaler.step on every step it drives
            if float(found_inf) != 0.0:  # host sync only on this (fp16 + fused) path
                self.n_skipped += 1
                return
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Everything that happens after one real optimizer step (public for custom loops)."""
        self.step += 1
        grads = None
        if self._dense_saved is not None:
            grads = self._dense_grad_scores()
            self._restore_dense()
        if self.rounds_enabled and self.step % self.update_frequency == 0:
            self.run_round(grad_scores=grads)
        self.apply_masks()

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        found = M.find_sw_layers(pl_module, self.include)
        owned = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        # layers trained by an optimizer are sparsified; the others (an EMA copy registered inside
        # the LightningModule, ...) are "shadows" that mirror the masks of their trained twin
        self._layers = [
            (n, m) for n, m in found if all(id(c.weight) in owned and c.weight.requires_grad for c in m.paths)
        ]
        self._shadows = M.match_shadow_layers([(n, m) for n, m in found if (n, m) not in self._layers], self._layers)
        if not self._layers:
            raise RuntimeError("SparsityCallback: the model has no trained ShiftWiseConv2d layers to sparsify")
        first_w = self._layers[0][1].paths[0].weight
        for opt in trainer.optimizers:
            owns = any(p is first_w for g in opt.param_groups for p in g["params"])
            if owns and self._counting_opt is None:
                self._counting_opt = opt
                self._handles.append(opt.register_step_pre_hook(self._pre_step))
                self._handles.append(opt.register_step_post_hook(self._post_step))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.total_steps is None:
            est = trainer.estimated_stepping_batches
            if not math.isfinite(est):
                raise ValueError("SparsityCallback: set total_steps (training length is unbounded)")
            self.total_steps = int(est)
        if not self.initialized:
            self.initialize(trainer, pl_module)
        else:
            known = {n for n, _ in self._layers}
            missing = [n for n in self.masked_layers if n not in known]
            if missing:
                raise RuntimeError(f"SparsityCallback: checkpoint names unknown SW layers {missing[:3]}")
        self._rebuild_cache()
        self.apply_masks()
        self.sync_shadows()
        self._check_ranks("start")
        if self.log_densities:
            self._pending_log.update(self._density_metrics())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # gradient growth needs the dense gradient of the step that ends in a round: open all
        # masks for that step's forward/backward (weights of pruned kernels are exactly 0, so the
        # forward is unchanged) and restore them in after_optimizer_step.
        if (
            self.growth == "gradient"
            and self.rounds_enabled
            and self._dense_saved is None
            and (self.step + 1) % self.update_frequency == 0
        ):
            with torch.no_grad():
                self._dense_saved = []
                for _, layer in self._masked():
                    self._dense_saved.append(layer.kernel_mask.clone())
                    layer.kernel_mask.fill_(1.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._shadows and self._shadow_step != self.step:
            self.sync_shadows()  # after LightningModule.optimizer_step (where an EMA is updated)
        if self._pending_log:
            logs, self._pending_log = self._pending_log, {}
            logs["sparsity/step"] = float(self.step)
            logs["sparsity/round"] = float(self.round)
            # straight to the loggers: rounds are rare and must not be dropped by log_every_n_steps
            # (values are identical on every rank; loggers write on rank 0 only)
            for lg in trainer.loggers:
                lg.log_metrics(logs, step=trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore_dense()
        self.teardown_hooks()
        if self.report and trainer.is_global_zero and self.initialized:
            self.write_report(trainer, pl_module)

    def write_report(self, trainer, pl_module) -> str:
        from swconv.analysis.sparsity import format_table, write_report

        out = self.report_dir or os.path.join(trainer.default_root_dir, "sparsity")
        meta = {
            "step": self.step,
            "round": self.round,
            "global_step": trainer.global_step,
            "config": self.state_dict()["config"],
        }
        rep = write_report(pl_module.state_dict(), out, meta)
        rank_zero_info(format_table(rep) + f"\nsparsity report: {out}/sparsity_report.png")
        return out

    def teardown(self, trainer, pl_module, stage) -> None:
        self._restore_dense()
        self.teardown_hooks()

    def teardown_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._counting_opt = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # a checkpoint taken while the masks are opened for a dense-gradient step (gradient growth,
        # e.g. right after an fp16-skipped step) must still carry the real masks
        if self._dense_saved is None or "state_dict" not in checkpoint:
            return
        sd = checkpoint["state_dict"]
        for (name, _), m in zip(self._masked(), self._dense_saved):
            key = f"{name}.kernel_mask"
            if key in sd:
                sd[key] = m.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "seed": self.seed,
            "total_steps": self.total_steps,
            "step": self.step,
            "round": self.round,
            "initialized": self.initialized,
            "masked_layers": list(self.masked_layers),
            "layer_densities": dict(self.layer_densities),
            "n_skipped": self.n_skipped,
            "prune_rate_now": self.current_prune_rate() if self.total_steps else None,
            "config": {
                "density": self.density,
                "init": self.init,
                "growth": self.growth,
                "update_frequency": self.update_frequency,
                "sparse_gap": self.sparse_gap,
                "prune_rate": self.prune_rate,
                "final_prune_rate": self.final_prune_rate,
                "schedule": self.schedule_name,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.total_steps = state["total_steps"]
        self.step = int(state["step"])
        self.round = int(state["round"])
        self.initialized = bool(state["initialized"])
        self.masked_layers = list(state["masked_layers"])
        self.layer_densities = dict(state.get("layer_densities", {}))
        self.n_skipped = int(state.get("n_skipped", 0))

    # ------------------------------------------------------------------ initialisation
    def initialize(self, trainer: pl.Trainer | None, pl_module: nn.Module, batch: Any = None) -> None:
        """Compute layer densities, draw the initial masks (generator of round 0), apply them."""
        if not self._layers:
            self._layers = M.find_sw_layers(pl_module, self.include)
        layers = self._layers
        if self.init == "dense":
            dens = [1.0] * len(layers)
        elif self.init == "uniform":
            dens = M.uniform_layer_densities(len(layers), self.density)
        elif self.init == "erk":
            shapes = [tuple(lay.paths[0].weight.shape) for _, lay in layers]
            counts = [lay.paths[0].weight.numel() * len(lay.paths) for _, lay in layers]
            dens = M.erk_layer_densities(shapes, counts, self.density, self.erk_power_scale)
        else:
            scores = self._snip_scores(trainer, pl_module, batch)
            dens = M.snip_layer_densities(scores, self.density)
        gen = M.round_generator(self.seed, 0)
        self.masked_layers, self.layer_densities = [], {}
        with torch.no_grad():
            for (name, layer), d in zip(layers, dens):
                n = layer.kernel_mask.shape[1]
                m = M.random_mask(n, d, gen, self.placement)  # always drawn: keeps the stream aligned
                realised = float(m.float().mean())
                if self.init == "dense" or realised >= self.dense_threshold:
                    layer.kernel_mask.fill_(1.0)
                    continue
                layer.kernel_mask.copy_(m.to(layer.kernel_mask.dtype).unsqueeze(0).expand_as(layer.kernel_mask))
                self.masked_layers.append(name)
                self.layer_densities[name] = d
        self.initialized = True
        self._rebuild_cache()
        self.apply_masks()
        if self.verbose:
            rank_zero_info(self.format_table(title=f"sparsity init ({self.init}, target density {self.density})"))

    def _snip_scores(self, trainer, pl_module: nn.Module, batch: Any) -> list[Tensor]:
        """SNIP scores per layer (all paths concatenated); averaged over DDP ranks once."""
        if batch is None:
            batch = self._one_batch(trainer)
        weights = [w for _, lay in self._layers for w in M.path_weights(lay)]
        buffers = {k: v.detach().clone() for k, v in pl_module.named_buffers()}
        was_training = pl_module.training
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            pl_module.train()
            with torch.enable_grad():
                loss = self._init_loss(pl_module, batch)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
        with torch.no_grad():  # undo BN running-stat updates
            for k, v in pl_module.named_buffers():
                if k in buffers:
                    v.copy_(buffers[k])
        pl_module.train(was_training)
        scores, i = [], 0
        for _, lay in self._layers:
            per_path = []
            for w in M.path_weights(lay):
                g = grads[i]
                i += 1
                per_path.append(M.snip_kernel_scores(w, g if g is not None else torch.zeros_like(w)))
            scores.append(torch.stack(per_path, 1))  # (rep*nk, n_path)
        flat = torch.cat([s.flatten() for s in scores])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flat)
            flat /= torch.distributed.get_world_size()
        out, o = [], 0
        for s in scores:
            out.append(flat[o : o + s.numel()].view_as(s).cpu())
            o += s.numel()
        return out

    @staticmethod
    def _init_loss(pl_module: nn.Module, batch: Any) -> Tensor:
        hook = getattr(pl_module, "sparsity_init_loss", None)
        if callable(hook):
            return hook(batch)
        if isinstance(batch, dict):
            x, y = batch.get("image", batch.get("x")), batch.get("label", batch.get("y"))
        else:
            x, y = batch[0], batch[1]
        logits = pl_module(x)
        if y.is_floating_point() and y.dim() == logits.dim():
            return torch.sum(-y * F.log_softmax(logits.float(), -1), -1).mean()
        return F.cross_entropy(logits.float(), y)

    @staticmethod
    def _one_batch(trainer) -> Any:
        if trainer is None:
            raise ValueError("SNIP init needs a batch or a trainer with a train dataloader")
        dm_hook = getattr(getattr(trainer, "datamodule", None), "sparsity_init_batch", None)
        if callable(dm_hook):  # a datamodule may supply the init batch itself (e.g. FFCV loaders)
            return trainer.strategy.batch_to_device(dm_hook())
        dl = trainer.train_dataloader
        if dl is None:
            raise RuntimeError("SNIP init: trainer has no train dataloader yet")
        if isinstance(dl, (list, tuple)):
            dl = dl[0]
        if isinstance(dl, dict):
            dl = next(iter(dl.values()))
        epoch_attr = getattr(dl, "next_epoch", None)  # FFCV counts epochs per __iter__
        with torch.random.fork_rng(devices=[]):  # do not shift the data order of the real run
            batch = next(iter(dl))
        if isinstance(epoch_attr, int):
            dl.next_epoch = epoch_attr
        return trainer.strategy.batch_to_device(batch)

    # ------------------------------------------------------------------ rounds
    @torch.no_grad()
    def _dense_grad_scores(self) -> list[list[Tensor]] | None:
        out = []
        for _, layer in self._masked():
            out.append(
                [M.kernel_grad_magnitude(p.weight.grad) if p.weight.grad is not None else None for p in layer.paths]
            )
        return out

    @torch.no_grad()
    def _restore_dense(self) -> None:
        if self._dense_saved is None:
            return
        for (_, layer), m in zip(self._masked(), self._dense_saved):
            layer.kernel_mask.copy_(m)
        self._dense_saved = None

    @torch.no_grad()
    def run_round(self, grad_scores: list[list[Tensor]] | None = None) -> dict[str, tuple[float, float]]:
        """One prune/regrow round at the current step (SPEC §3.4). Returns {layer: (before, after)}."""
        layers = self._masked()
        self.round += 1
        r = self.step // self.update_frequency if self.update_frequency else self.round
        rate = self.current_prune_rate()
        sync = self.sparse_gap > 0 and r % self.sparse_gap == 0
        gen = M.round_generator(self.seed, r)
        if not layers:
            return {}
        # gather magnitudes and masks of every layer/path in one host transfer
        mags = torch.cat([M.kernel_magnitude(p.weight) for _, lay in layers for p in lay.paths])
        cur = torch.cat([lay.kernel_mask.flatten().float() for _, lay in layers])
        if grad_scores is not None:
            gs = [g for per in grad_scores for g in per]
            sizes = [lay.kernel_mask.shape[1] for _, lay in layers for _ in lay.paths]
            gcat = torch.cat(
                [g if g is not None else torch.zeros_like(m) for g, m in zip(gs, torch.split(mags, sizes))]
            ).cpu()
        host = torch.cat([mags, cur.to(mags.device)]).cpu()
        mags_h, cur_h = host[: mags.numel()], host[mags.numel() :]
        report: dict[str, tuple[float, float]] = {}
        o_m = 0
        for name, layer in layers:
            n_path, n = layer.kernel_mask.shape
            mk = cur_h[o_m : o_m + n_path * n].view(n_path, n) > 0
            sc = mags_h[o_m : o_m + n_path * n].view(n_path, n)
            gr = gcat[o_m : o_m + n_path * n].view(n_path, n) if grad_scores is not None else None
            o_m += n_path * n
            before = float(mk.float().mean())
            if sync:
                m0, removed = M.magnitude_prune(mk[0], sc.sum(0), rate)
                m0 = self._grow(m0, removed, gen, None if gr is None else gr.sum(0))
                new = m0.unsqueeze(0).expand(n_path, n)
            else:
                rows = []
                for q in range(n_path):
                    mq, removed = M.magnitude_prune(mk[q], sc[q], rate)
                    rows.append(self._grow(mq, removed, gen, None if gr is None else gr[q]))
                new = torch.stack(rows)
            layer.kernel_mask.copy_(new.to(layer.kernel_mask.dtype))
            report[name] = (before, float(new.float().mean()))
        self._check_ranks(f"round {self.round}")
        if self.log_densities:
            self._pending_log.update(self._density_metrics())
            self._pending_log["sparsity/prune_rate"] = rate
        if self.verbose:
            rank_zero_info(
                self.format_table(
                    report,
                    title=f"sparsity round {self.round} (step {self.step}, "
                    f"rate {rate:.4f}{', paths aligned' if sync else ''})",
                )
            )
        return report

    def _grow(self, mask: Tensor, removed: int, gen: torch.Generator, grad: Tensor | None) -> Tensor:
        if self.growth == "random":
            return M.random_regrow(mask, removed, gen)
        if self.growth == "gradient":
            if grad is None:  # no dense gradient available (e.g. manual round): fall back to random
                return M.random_regrow(mask, removed, gen)
            return M.gradient_regrow(mask, grad, removed)
        return mask

    # ------------------------------------------------------------------ DDP consistency
    def _check_ranks(self, where: str) -> None:
        if not (self.check_ranks and torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if torch.distributed.get_world_size() == 1:
            return
        masks = [lay.kernel_mask for _, lay in self._layers]
        c = M.masks_checksum(masks)
        dev = masks[0].device
        if torch.distributed.get_backend() == "nccl" and dev.type != "cuda":
            dev = torch.device("cuda", torch.cuda.current_device())
        t = torch.tensor([c, -c, self.step, -self.step], dtype=torch.int64, device=dev)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        if int(t[0]) != -int(t[1]) or int(t[2]) != -int(t[3]):
            raise SparsityMismatchError(
                f"SparsityCallback ({where}): masks or step counters differ across ranks "
                f"(checksum max {int(t[0])} min {-int(t[1])}, step max {int(t[2])} min {-int(t[3])})"
            )

    # ------------------------------------------------------------------ reporting
    def layer_density(self) -> dict[str, float]:
        """Current fraction of active (path, kernel) mask entries per SW layer."""
        return {n: float(lay.kernel_mask.float().mean()) for n, lay in self._layers}

    def _density_metrics(self) -> dict[str, float]:
        out, tot, act = {}, 0, 0.0
        for n, lay in self._layers:
            d = lay.kernel_mask.float()
            out[f"sparsity/density/{n}"] = float(d.mean())
            tot += d.numel()
            act += float(d.sum())
        out["sparsity/density"] = act / max(tot, 1)
        return out

    def format_table(self, report: dict[str, tuple[float, float]] | None = None, title: str = "") -> str:
        lines = [title] if title else []
        dens = self.layer_density()
        for n, _ in self._layers:
            if report and n in report:
                b, a = report[n]
                lines.append(f"  {n:<40s} {b:.4f} -> {a:.4f}")
            else:
                lines.append(f"  {n:<40s} {dens[n]:.4f}{'' if n in self.masked_layers else ' (dense)'}")
        return "\n".join(lines)
