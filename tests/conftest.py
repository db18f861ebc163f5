"""Shared fixtures: config composition, small on-disk datasets, subprocess runner, `gpu` marker.

- ``@pytest.mark.gpu`` tests are skipped without CUDA; ``requires(pkg)`` skips without a package.
- ``compose(config_name, overrides, out_dir)`` composes a conf/ config the way ``@hydra.main``
  would (hydra node set, paths.output_dir pointed at ``out_dir``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
for p in (ROOT / "src", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")


# ------------------------------------------------------------------------------ markers / skips
def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped otherwise)")
    config.addinivalue_line("markers", "slow: takes more than ~10 s")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def requires(*packages: str):
    """``@requires("cupy")``: skip unless every package is importable."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"missing package(s): {missing}")


# ---------------------------------------------------------------------------------- composition
def compose(config_name: str = "train", overrides=(), out_dir: str | os.PathLike | None = None):
    from hydra import compose as h_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = h_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    if out_dir is not None:
        out_dir = str(out_dir)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = out_dir
            cfg.hydra.job.num = 0
            cfg.paths.output_dir = out_dir
            cfg.paths.log_dir = out_dir
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(config_name="train", overrides=(), out_dir=None):
        return compose(config_name, overrides, out_dir or tmp_path)

    return _compose


# ----------------------------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory) -> Path:
    """A tiny learnable Fashion-MNIST look-alike in IDX format (300 train / 100 test)."""
    from tests.helpers.data import write_fake_fashion_mnist

    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


# ----------------------------------------------------------------------------------- subprocess
def run_script(args, timeout: int = 300, check: bool = True, env=None) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root with src/ and the repo on PYTHONPATH."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), e.get("PYTHONPATH", "")])
    e.setdefault("WANDB_MODE", "disabled")
    e.update(env or {})
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def script_runner():
    return run_script


# ------------------------------------------------------------------------------- tiny train runs
def tiny_train_overrides(data_root, out_dir=None, epochs: int = 2) -> list[str]:
    """Overrides for a seconds-long CPU run of the real main-job stack (pico SW model, Fashion-
    MNIST datamodule) on the fake IDX fixture: 250 train / 50 val / 100 test images."""
    o = [
        f"data.root={data_root}",
        "data.val_size=50",
        "data.batch_size=50",
        "data.eval_batch_size=100",
        f"trainer.max_epochs={epochs}",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "~callbacks.rich_progress_bar",
        "~callbacks.model_summary",
        "extras.print_config=false",
        "scheduler.warmup_epochs=0.5",
        "optimizer.lr=5e-3",
    ]
    if out_dir is not None:
        o.append(f"hydra.run.dir={out_dir}")
    return o


@pytest.fixture(scope="session")
def trained_fmnist_run(fake_fmnist, tmp_path_factory):
    """Train the tiny run once per session (in-process); returns (cfg, metrics, objects)."""
    from swconv.training.run import train

    out = tmp_path_factory.mktemp("trained_run")
    cfg = compose("train", tiny_train_overrides(fake_fmnist), out)
    metrics, objects = train(cfg)
    return cfg, metrics, objects
