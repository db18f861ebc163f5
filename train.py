"""Train a classifier: ``python train.py [experiment=...] [group=option] [key=value ...]``.

With no arguments it runs the main job (ShiftWise-v2 pico on Fashion-MNIST, CPU). Configs in
conf/ (Hydra, version_base 1.3); docs/training.md explains them.
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # source checkout without `pip install -e .`

from swconv.training.run import extras, get_metric_value, train  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    extras(cfg)
    metrics, _ = train(cfg)
    try:
        import wandb  # multirun + wandb: close the run of this job

        if wandb.run is not None:
            wandb.finish()
    except ImportError:
        pass
    return get_metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
