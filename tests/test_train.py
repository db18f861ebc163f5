"""train.py: fast_dev_run, DDP on 2 CPU processes, resume after a hard kill, multirun, errors."""

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_train_overrides


def test_fast_dev_run(fake_fmnist, compose_cfg):
    from swconv.training.run import train

    cfg = compose_cfg("train", tiny_train_overrides(fake_fmnist) + ["debug=fdr", "module.channels_last=true"])
    metrics, objects = train(cfg)
    assert objects["trainer"].fast_dev_run and "test/acc" in metrics


def test_train_learns_and_writes_outputs(trained_fmnist_run):
    cfg, metrics, objects = trained_fmnist_run
    out = Path(cfg.paths.output_dir)
    assert metrics["test/acc"] > 0.5, metrics  # the fake classes are trivially separable
    assert "val/acc_best" in metrics and "test/acc5" in metrics
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert Path(objects["best_ckpt"]).is_file()
    assert (out / "csv" / "metrics.csv").is_file() and (out / "training_curves.png").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["best_checkpoint"] == objects["best_ckpt"]
    ckpt = torch.load(objects["best_ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["model"]["name"] == "shiftwise_v2_pico"
    assert "rng_states" in ckpt and ckpt["lr_schedulers"] and ckpt["optimizer_states"]


def test_missing_data_dir(compose_cfg, tmp_path):
    from swconv.data import MissingDataError
    from swconv.training.run import train

    root = tmp_path / "no_fmnist_here"
    cfg = compose_cfg("train", tiny_train_overrides(root))
    with pytest.raises(MissingDataError) as e:
        train(cfg)
    assert str(root) in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)


def _losses(csv_path):
    out = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


@pytest.mark.slow
def test_resume_after_hard_kill_matches_uninterrupted(fake_fmnist, tmp_path, compose_cfg, script_runner):
    """Deterministic CPU run with augmentation, mixup (numpy RNG), drop path (torch RNG) and EMA:
    a run killed with os._exit at the start of epoch 1 and resumed from last.ckpt logs the same
    per-step losses and ends with the same weights as an uninterrupted run."""
    from swconv.training.run import train

    extra = [
        "module.mixup={mixup_alpha:0.8,cutmix_alpha:1.0,prob:1.0,switch_prob:0.5,mode:batch}",
        "module.ema={decay:0.9,evaluate:true}",
        "model.kwargs.drop_path_rate=0.1",
        "data.limit_train=150",
    ]
    base = tiny_train_overrides(fake_fmnist, epochs=2) + extra
    # A: uninterrupted, in-process
    cfg = compose_cfg("train", base + ["test=false"], out_dir=tmp_path / "A")
    train(cfg)
    # B: killed hard at the start of epoch 1 (after epoch 0's checkpoints were written)
    b = script_runner(
        [
            "train.py",
            *base,
            "test=false",
            f"hydra.run.dir={tmp_path / 'B'}",
            "+callbacks.kill._target_=tests.helpers.callbacks.HardKill",
            "+callbacks.kill.at_epoch=1",
        ],
        check=False,
    )
    assert b.returncode == 137, b.stderr[-3000:]
    last = tmp_path / "B" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert not list((tmp_path / "B" / "checkpoints").glob("*.tmp-*"))
    # C: resume from B's last.ckpt
    script_runner(["train.py", *base, "test=false", f"hydra.run.dir={tmp_path / 'C'}", f"ckpt_path={last}"])
    la, lb, lc = (_losses(tmp_path / r / "csv" / "metrics.csv") for r in "ABC")
    first_resumed = min(lc)
    assert first_resumed == max(lb) + 1 == torch.load(last, weights_only=False)["global_step"]
    assert set(lc) == {s for s in la if s >= first_resumed} and len(lc) >= 2
    for s in lc:
        assert lc[s] == pytest.approx(la[s], abs=1e-6), (s, la[s], lc[s])
    wa = torch.load(tmp_path / "A" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    wc = torch.load(tmp_path / "C" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert wa.keys() == wc.keys()
    for k in wa:  # includes the EMA copy (ema.module.*)
        torch.testing.assert_close(wa[k], wc[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, script_runner):
    """trainer=ddp_sim: 2 gloo processes; the global batch 32 is split 16/16, so 128 samples
    make 4 optimizer steps per epoch (not 2), and the test set is evaluated exactly once."""
    out = tmp_path / "ddp"
    script_runner(
        [
            "train.py",
            "trainer=ddp_sim",
            "data=synthetic",
            "data.in_chans=1",
            "data.img_size=28",
            "data.num_train=128",
            "data.num_val=40",
            "data.num_test=50",
            "data.batch_size=32",
            "data.eval_batch_size=20",
            "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "~callbacks.rich_progress_bar",
            "~callbacks.model_summary",
            "extras.print_config=false",
            f"hydra.run.dir={out}",
        ],
        timeout=400,
    )
    summary = json.loads((out / "train_summary.json").read_text())
    assert "test/acc" in summary["metrics"]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    assert len(ckpt["rng_states"]) == 2  # one RNG state per rank


@pytest.mark.slow
def test_multirun_two_jobs(fake_fmnist, tmp_path, script_runner):
    sweep = tmp_path / "sweep"
    proc = script_runner(
        [
            "train.py",
            "-m",
            "seed=1,2",
            *tiny_train_overrides(fake_fmnist),
            "trainer.max_epochs=1",
            "data.limit_train=50",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    for job in ("0", "1"):
        assert (sweep / job / "train_summary.json").is_file(), proc.stdout[-2000:]
    assert (sweep / "multirun.yaml").is_file()
    s0, s1 = (json.loads((sweep / j / "train_summary.json").read_text()) for j in "01")
    assert s0["best_checkpoint"] != s1["best_checkpoint"]


def test_atomic_checkpoint_write_survives_a_crash(tmp_path, monkeypatch):
    """A crash while writing never leaves a partial file under the checkpoint name."""
    import os

    from swconv.training.checkpoint_io import atomic_torch_save

    p = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, p)

    def boom(*a, **k):
        raise OSError("disk died during rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_torch_save({"step": 2, "big": torch.zeros(1000)}, p)
    assert torch.load(p)["step"] == 1
    assert [x.name for x in tmp_path.iterdir()] == ["last.ckpt"]
