"""eval.py reproduces the test accuracy measured at the end of training and rejects bad input."""

import json

import pytest


@pytest.mark.slow
def test_eval_reproduces_training_test_accuracy(trained_fmnist_run, fake_fmnist, tmp_path, script_runner):
    cfg, metrics, objects = trained_fmnist_run
    out = tmp_path / "eval"
    script_runner(
        [
            "eval.py",
            f"ckpt_path={objects['best_ckpt']}",
            f"data.root={fake_fmnist}",
            "data.val_size=50",
            "data.eval_batch_size=100",
            "extras.print_config=false",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}",
        ]
    )
    report = json.loads((out / "eval_report.json").read_text())
    assert abs(report["metrics"]["test/acc"] - metrics["test/acc"]) <= 1e-4
    assert report["model"]["name"] == "shiftwise_v2_pico"
    assert len(report["checkpoint"]["sha256"]) == 64 and report["data"]["root"] == str(fake_fmnist)


def test_eval_in_process_and_other_model_checkpoint(trained_fmnist_run, fake_fmnist, compose_cfg):
    from swconv.training.run import CheckpointMismatchError, evaluate

    _, metrics, objects = trained_fmnist_run
    ov = [
        f"ckpt_path={objects['best_ckpt']}",
        f"data.root={fake_fmnist}",
        "data.val_size=50",
        "extras.print_config=false",
        "trainer.enable_progress_bar=false",
    ]
    m, res = evaluate(compose_cfg("eval", ov))
    assert abs(m["test/acc"] - metrics["test/acc"]) <= 1e-4 and res["report_path"].is_file()
    with pytest.raises(CheckpointMismatchError, match="shiftwise_v2_pico.*model=resnet18"):
        evaluate(compose_cfg("eval", ov + ["model=resnet18"]))


def test_eval_missing_checkpoint(compose_cfg, fake_fmnist):
    from swconv.training.run import evaluate

    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        evaluate(compose_cfg("eval", ["ckpt_path=nope.ckpt", f"data.root={fake_fmnist}"]))
