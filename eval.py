"""Evaluate a checkpoint: ``python eval.py ckpt_path=<file.ckpt> [data/experiment overrides]``.

Writes eval_report.json (metrics, model, data, checkpoint sha256) into the run dir.
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from swconv.training.run import evaluate, extras  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig):
    extras(cfg)
    metrics, _ = evaluate(cfg)
    return metrics.get("test/acc", metrics.get("val/acc"))


if __name__ == "__main__":
    main()
