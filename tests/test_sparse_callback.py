"""SparsityCallback with Lightning on CPU: step hook, accumulation, AMP, resume, DDP."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from swconv.ops import ShiftWiseConv2d  # noqa: E402
from swconv.sparse import SparsityCallback, SparsityMismatchError  # noqa: E402
from swconv.sparse import masks as M  # noqa: E402


# ----------------------------------------------------------------------------- toy setup
class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.sw1 = ShiftWiseConv2d(12, 7, 3, ghost_ratio=0.23, n_path=2, n_rep=2, impl="torch")
        self.sw2 = ShiftWiseConv2d(12, 5, 3, ghost_ratio=0.0, n_path=2, n_rep=1, impl="torch")
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        x = self.sw2(self.sw1(F.gelu(self.stem(x))))
        return self.head(x.mean((2, 3)))


class ToyModule(L.LightningModule):
    def __init__(self, poison_step: int | None = None, opt: str = "adamw", ema: bool = False):
        super().__init__()
        self.opt = opt
        self.net = ToyNet()
        self.losses: list[float] = []
        self.poison_step = poison_step
        self._poisoned = False
        self.ema = None
        if ema:  # like swconv.training.ClassificationModule: a registered timm EMA of the net
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.net, decay=0.5)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.net, step=self.global_step)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x).float(), y)
        self.losses.append(float(loss.detach()))
        if self.poison_step is not None and not self._poisoned and self.global_step == self.poison_step:
            self._poisoned = True
            loss = loss * float("inf")  # -> non-finite grads -> GradScaler skips this step
        return loss

    def configure_optimizers(self):
        if self.opt == "sgd":
            return torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)
        return torch.optim.AdamW(self.net.parameters(), lr=3e-2, weight_decay=0.05)


def toy_data(n=48, bs=4):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))
    return DataLoader(ds, batch_size=bs, shuffle=False)


def make_trainer(tmp_path, cbs, **kw):
    args = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
    )
    args.update(kw)
    return L.Trainer(callbacks=cbs, **args)


def cb_args(**kw):
    a = dict(density=0.6, init="uniform", update_frequency=2, sparse_gap=3, seed=7, verbose=False)
    a.update(kw)
    return a


def sw_layers(module):
    return M.find_sw_layers(module)


def assert_weights_follow_masks(module):
    for _, layer in sw_layers(module):
        for q, p in enumerate(layer.paths):
            dead = layer.kernel_mask[q] == 0
            assert dead.any()
            assert torch.count_nonzero(p.weight.detach()[dead]) == 0


class StepSpy(L.Callback):
    """Checks after every batch that pruned weights are zero iff an optimizer step happened."""

    def __init__(self, sparsity_cb):
        self.cb = sparsity_cb
        self.applies_at_batch = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.applies_at_batch.append(self.cb.n_applies)


# ----------------------------------------------------------------------------- tests
def test_once_per_optimizer_step_under_accumulation(tmp_path):
    L.seed_everything(0)
    cb = SparsityCallback(**cb_args())
    spy = StepSpy(cb)
    model = ToyModule()
    trainer = make_trainer(tmp_path, [cb, spy], accumulate_grad_batches=3)
    trainer.fit(model, toy_data(n=48, bs=4))  # 12 batches -> 4 optimizer steps
    assert trainer.global_step == 4
    assert cb.step == 4 and cb.round == 2
    base = spy.applies_at_batch[0] - 0  # applies before the first step (init + start)
    # the count increases only at batches 3, 6, 9, 12 (end of each accumulation window)
    incs = [b - a for a, b in zip([base] + spy.applies_at_batch[:-1], spy.applies_at_batch)]
    assert incs[0] == 0 and incs == [0, 0, 1] * 4
    assert_weights_follow_masks(model)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sparsity_holds_under_amp(tmp_path, precision):
    L.seed_everything(0)
    cb = SparsityCallback(**cb_args())
    if precision == "bf16":
        model = ToyModule()
        kw = dict(precision="bf16-mixed")
    else:
        model = ToyModule(poison_step=2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        kw = dict(plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer = make_trainer(tmp_path, [cb], **kw)
    trainer.fit(model, toy_data(n=40, bs=4))  # 10 batches
    assert_weights_follow_masks(model)
    dens = cb.layer_density()
    assert all(0.2 < d < 0.95 for d in dens.values())
    if precision == "fp16":
        assert model._poisoned
        # the skipped step does not count: our counter runs one behind Lightning's global_step
        assert cb.step == 9
        assert trainer.global_step in (9, 10)
        assert scaler.get_scale() < 2.0**10
    else:
        assert cb.step == trainer.global_step == 10


def test_static_masks_and_snip_init(tmp_path):
    L.seed_everything(0)
    cb = SparsityCallback(**cb_args(init="snip", update_frequency=0, density=0.5, dense_threshold=1.01))
    model = ToyModule()
    trainer = make_trainer(tmp_path, [cb])
    masks0 = None

    class Grab(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            nonlocal masks0
            if masks0 is None:
                masks0 = [lay.kernel_mask.clone() for _, lay in sw_layers(pl_module)]

    trainer.callbacks.append(Grab())
    trainer.fit(model, toy_data(n=16, bs=4))
    assert cb.round == 0 and cb.initialized
    assert set(cb.masked_layers) == {"net.sw1", "net.sw2"}
    assert all(torch.equal(a, lay.kernel_mask) for a, (_, lay) in zip(masks0, sw_layers(model)))
    assert_weights_follow_masks(model)


def test_gradient_growth_round(tmp_path):
    L.seed_everything(0)
    cb = SparsityCallback(**cb_args(growth="gradient", sparse_gap=0))
    model = ToyModule()
    seen = []
    orig = cb._dense_grad_scores

    def spy():
        scores = orig()
        # during the dense step every kernel of every path got a gradient, pruned ones included
        for (_, layer), per in zip(cb._masked(), scores):
            saved = cb._dense_saved[[n for n, _ in cb._masked()].index(_name(model, layer))]
            for q, g in enumerate(per):
                seen.append(bool((g[saved[q] == 0] > 0).all()))
        return scores

    cb._dense_grad_scores = spy
    trainer = make_trainer(tmp_path, [cb])
    counts0 = {}

    class Grab(L.Callback):
        def on_train_start(self, trainer, pl_module):
            for n, lay in sw_layers(pl_module):
                counts0[n] = lay.kernel_mask.sum(1).clone()

    trainer.callbacks.append(Grab())
    trainer.fit(model, toy_data(n=24, bs=4))  # 6 steps, 3 rounds
    assert cb.round == 3 and cb._dense_saved is None
    assert seen and all(seen)
    for n, layer in sw_layers(model):  # gradient growth regrows exactly what was pruned
        assert torch.equal(layer.kernel_mask.sum(1), counts0[n])
    assert_weights_follow_masks(model)


def _name(model, layer):
    return next(n for n, m in model.named_modules() if m is layer)


@pytest.mark.parametrize(
    "opt_state,grads,opt",
    [("all", False, "adamw"), ("none", True, "adamw"), ("reference", False, "sgd"), ("reference", False, "adamw")],
)
def test_optional_masking_of_moments_and_grads(tmp_path, opt_state, grads, opt):
    L.seed_everything(0)
    cb = SparsityCallback(**cb_args(mask_optimizer_state=opt_state, mask_grads=grads))
    model = ToyModule(opt=opt)
    trainer = make_trainer(tmp_path, [cb])
    trainer.fit(model, toy_data(n=20, bs=4))
    opt = trainer.optimizers[0]
    for _, layer in sw_layers(model):
        for q, conv in enumerate(layer.paths):
            p = conv.weight
            dead = layer.kernel_mask[q] == 0
            assert dead.any()
            if grads:
                assert torch.count_nonzero(p.grad[dead]) == 0
            st = opt.state[p]
            if opt_state == "all":
                assert torch.count_nonzero(st["exp_avg"][dead]) == 0
                assert torch.count_nonzero(st["exp_avg_sq"][dead]) == 0
            if opt_state == "reference" and "momentum_buffer" in st:
                assert torch.count_nonzero(st["momentum_buffer"][dead]) == 0
            if opt_state == "reference" and "exp_avg_sq" in st:  # AdamW moments are left alone
                assert torch.count_nonzero(st["exp_avg_sq"][dead]) > 0
    assert_weights_follow_masks(model)


def test_snip_init_has_no_side_effects():
    torch.manual_seed(0)
    model = ToyModule()
    bn_before = {k: v.clone() for k, v in model.named_buffers() if "running" in k}
    batch = (torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)))
    rng_before = torch.get_rng_state()
    cbs = [SparsityCallback(**cb_args(init="snip", density=0.5, dense_threshold=1.01)) for _ in range(2)]
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    for cb in cbs:
        model.load_state_dict(fresh)  # same dense weights and all-ones masks for both inits
        cb.initialize(None, model, batch=batch)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for k, v in model.named_buffers():
        if k in bn_before:
            assert torch.equal(v, bn_before[k])
    assert all(p.grad is None for p in model.parameters())
    assert cbs[0].layer_densities == cbs[1].layer_densities  # reproducible for a fixed seed/batch
    total = sum(cbs[0].layer_densities[n] * lay.kernel_mask.numel() for n, lay in sw_layers(model))
    assert total / sum(lay.kernel_mask.numel() for _, lay in sw_layers(model)) == pytest.approx(0.5, abs=0.02)


def test_report_cli(tmp_path):
    import json

    from swconv.analysis import sparsity as R

    L.seed_everything(0)
    cb = SparsityCallback(**cb_args(report=True, report_dir=str(tmp_path / "rep")))
    model = ToyModule()
    trainer = make_trainer(tmp_path, [cb])
    trainer.fit(model, toy_data(n=16, bs=4))
    assert (tmp_path / "rep" / "sparsity_report.png").is_file()
    ck = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ck)
    assert R.main([f"ckpt={ck}", f"out={tmp_path / 'cli'}"]) == 0
    rep = json.loads((tmp_path / "cli" / "sparsity_report.json").read_text())
    assert (tmp_path / "cli" / "sparsity_report.png").is_file()
    assert [r["layer"] for r in rep["layers"]] == ["net.sw1", "net.sw2"]
    assert rep["meta"]["sparsity_callback"]["step"] == 4
    for r, (_, lay) in zip(rep["layers"], sw_layers(model)):
        assert r["density_per_path"] == pytest.approx(lay.kernel_mask.float().mean(1).tolist(), abs=1e-6)
        assert r["density_union"] == pytest.approx(float(lay.kernel_active().float().mean()), abs=1e-6)
    h = rep["active_kernels_per_channel"]
    assert sum(sum(v["counts"]) for v in h.values()) == sum(lay.rep_channels for _, lay in sw_layers(model))


def test_ema_copy_mirrors_masks(tmp_path):
    from swconv.analysis import sparsity as R

    L.seed_everything(0)
    cb = SparsityCallback(**cb_args())
    model = ToyModule(ema=True)
    trainer = make_trainer(tmp_path, [cb])
    trainer.fit(model, toy_data(n=24, bs=4))
    assert [n for n, _ in cb._layers] == ["net.sw1", "net.sw2"] and len(cb._shadows) == 2
    assert cb.round == 3
    for (_, a), (_, b) in zip(sw_layers(model.net), sw_layers(model.ema.module)):
        assert torch.equal(a.kernel_mask, b.kernel_mask)  # binary, identical, not lerped
    assert_weights_follow_masks(model.ema.module)
    rep = R.build_report(model.state_dict())
    assert [r["layer"] for r in rep["layers"]] == ["net.sw1", "net.sw2"]


def _run(tmp_path, epochs, ckpt=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0)
    cb = SparsityCallback(**cb_args(update_frequency=3, sparse_gap=2, total_steps=40))
    model = ToyModule()
    mc = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = make_trainer(tmp_path, [cb, mc], max_epochs=epochs, enable_checkpointing=True)
    trainer.fit(model, toy_data(n=20, bs=4), ckpt_path=ckpt)  # 5 steps/epoch, rounds mid-epoch
    return model, cb


def test_kill_and_resume_is_exact(tmp_path):
    # the uninterrupted run also leaves its end-of-epoch checkpoints behind: resuming from the one
    # taken mid-training (after epoch 2 of 4, step 10, next round at step 12) must replay the rest
    full, cb_full = _run(tmp_path / "a", 4)
    ck = str(tmp_path / "a" / "ckpt" / "epoch=1.ckpt")
    state = torch.load(ck, weights_only=False)
    sp = next(v for k, v in state["callbacks"].items() if "SparsityCallback" in k)
    assert sp["step"] == 10 and sp["round"] == 3
    resumed, cb_res = _run(tmp_path / "c", 4, ckpt=ck)
    assert cb_res.step == cb_full.step == 20 and cb_res.round == cb_full.round == 6
    assert resumed.losses == full.losses[10:]  # bitwise identical losses after the resume
    for (_, a), (_, b) in zip(sw_layers(full), sw_layers(resumed)):
        assert torch.equal(a.kernel_mask, b.kernel_mask)
        for pa, pb in zip(a.paths, b.paths):
            assert torch.equal(pa.weight, pb.weight)


def test_fused_optimizer_skipped_step_not_counted():
    """Fused AdamW unscales inside step(): GradScaler always calls it; found_inf decides."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    net = ToyNet()
    try:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2, fused=True)
    except (RuntimeError, TypeError):
        pytest.skip("fused AdamW not available on this device")
    cb = SparsityCallback(**cb_args(update_frequency=0))
    pl_stub = net
    cb.on_fit_start(SimpleNamespace(optimizers=[opt]), pl_stub)
    cb.initialize(None, net)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    for i in range(4):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y) * (float("inf") if i == 1 else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert cb.step == 3 and cb.n_skipped == 1
    assert_weights_follow_masks(net)
    cb.teardown_hooks()


# ----------------------------------------------------------------------------- DDP (2 CPU processes)
class SaveMasks(L.Callback):
    def __init__(self, out_dir):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        masks = {n: lay.kernel_mask.clone() for n, lay in sw_layers(pl_module)}
        cb = next(c for c in trainer.callbacks if isinstance(c, SparsityCallback))
        torch.save(
            {"masks": masks, "step": cb.step, "round": cb.round},
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )


class DesyncGlobalRNG(L.Callback):
    """Different global RNG streams per rank: anything drawing masks from them would diverge."""

    def on_train_start(self, trainer, pl_module):
        torch.manual_seed(1000 + trainer.global_rank)


def ddp_main(out_dir):
    L.seed_everything(0)
    cb = SparsityCallback(**cb_args(init="snip", update_frequency=2, sparse_gap=2))
    model = ToyModule()
    trainer = make_trainer(out_dir, [DesyncGlobalRNG(), cb, SaveMasks(str(out_dir))], devices=2, strategy="ddp_fork")
    trainer.fit(model, toy_data(n=32, bs=4))  # 4 batches per rank -> 4 steps, 2 rounds


def test_ddp_two_cpu_processes_identical_masks(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    # a fresh interpreter: forking is not allowed once CUDA is initialised (GPU CI runs GPU tests first)
    here = Path(__file__).resolve().parent
    code = (
        f"import sys; sys.path[:0] = [{str(here)!r}, {str(here.parent / 'src')!r}]; "
        f"import test_sparse_callback as t; t.ddp_main({str(tmp_path)!r})"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0["step"] == r1["step"] == 4 and r0["round"] == r1["round"] == 2
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k])
        assert 0 < r0["masks"][k].mean() < 1


def _mismatch_worker(rank, world, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = ToyNet()
        cb = SparsityCallback(**cb_args())
        cb._layers = M.find_sw_layers(net)
        cb._check_ranks("same")  # identical (all ones) -> fine
        if rank == 1:
            net.sw1.kernel_mask[0, 3] = 0
        try:
            cb._check_ranks("diverged")
            ok = False
        except SparsityMismatchError:
            ok = True
        torch.save(ok, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_checksum_mismatch_raises(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_mismatch_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")
    assert torch.load(tmp_path / "0.pt") and torch.load(tmp_path / "1.pt")


# ----------------------------------------------------------------------------- configs, end to end
SPARSITY_VARIANTS = {
    "reference": {},
    "erk": {"init": "erk"},
    "uniform": {"init": "uniform"},
    "gradient": {"growth": "gradient"},
    "static": {"update_frequency": 0},
}


@pytest.mark.parametrize("name", sorted(SPARSITY_VARIANTS) + ["none"])
def test_sparsity_configs_instantiate(name, compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", [f"sparsity={name}"])
    if name == "none":
        assert cfg.sparsity.callback is None
        return
    cb = instantiate(cfg.sparsity.callback)
    assert isinstance(cb, SparsityCallback)
    ref = dict(
        density=0.7,
        init="snip",
        placement="bernoulli",
        growth="random",
        prune_rate=0.3,
        final_prune_rate=0.005,
        schedule_name="cosine",
        update_frequency=100,
        sparse_gap=131,
        total_steps=None,
        mask_grads=False,
        mask_optimizer_state="reference",
        seed=cfg.seed,
    )
    ref.update(SPARSITY_VARIANTS[name])
    for k, v in ref.items():
        assert getattr(cb, k) == v, (name, k)
    assert not cb.rounds_enabled if name == "static" else cb.rounds_enabled


@pytest.mark.slow
def test_reference_config_trains_default_experiment(compose_cfg, fake_fmnist, tmp_path):
    import csv
    import json

    from swconv.training.run import train

    cfg = compose_cfg(
        "train",
        [
            "sparsity=reference",
            f"data.root={fake_fmnist}",
            "data.val_size=50",
            "data.batch_size=32",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "sparsity.callback.update_frequency=3",
            "module.ema={decay:0.9,warmup:false,evaluate:true}",
        ],
        out_dir=tmp_path,
    )
    metrics, objs = train(cfg)
    cb = next(c for c in objs["trainer"].callbacks if isinstance(c, SparsityCallback))
    assert cb.step == objs["trainer"].global_step == 7 and cb.round == 2
    assert_weights_follow_masks(objs["model"].net)
    assert_weights_follow_masks(objs["model"].ema.module)  # the EMA copy mirrors the masks
    for (_, a), (_, b) in zip(sw_layers(objs["model"].net), sw_layers(objs["model"].ema.module)):
        assert torch.equal(a.kernel_mask, b.kernel_mask)
    png = tmp_path / "sparsity" / "sparsity_report.png"
    assert png.is_file()
    rep = json.loads((tmp_path / "sparsity" / "sparsity_report.json").read_text())
    assert 0.4 < rep["overall"]["density_paths"] < 0.95
    csv_path = json.loads((tmp_path / "train_summary.json").read_text())["metrics_csv"]
    with open(csv_path) as f:
        header = next(csv.reader(f))
    assert "sparsity/density" in header and any(h.startswith("sparsity/density/net.") for h in header)
    assert "test/acc" in metrics


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true"])
def test_gpu_sparsity_holds_and_pruned_kernels_get_no_gradient(tmp_path, precision):
    """On CUDA (CuPy kernels when importable): masks hold on every precision path, the fp16 skipped
    step is not counted, and kernels pruned on every path get exactly zero gradient."""
    L.seed_everything(0)
    # rounds at steps 4 and 8: the last backward (step 9 or 10) already saw the final masks
    cb = SparsityCallback(**cb_args(update_frequency=4))
    model = ToyModule(poison_step=2 if precision == "16-mixed" else None)
    for _, lay in sw_layers(model):
        lay.impl = "auto"
    trainer = make_trainer(tmp_path, [cb], accelerator="gpu", devices=1, precision=precision)
    trainer.fit(model, toy_data(n=40, bs=4))
    assert_weights_follow_masks(model)
    assert cb.step == (9 if precision == "16-mixed" else 10)
    for _, lay in sw_layers(model):
        dead = ~lay.kernel_active()
        for conv in lay.paths:
            assert conv.weight.grad is not None
            assert torch.count_nonzero(conv.weight.grad[dead]) == 0
