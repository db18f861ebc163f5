"""Callbacks injected into train.py runs by tests through Hydra overrides, e.g.
``+callbacks.kill._target_=tests.helpers.callbacks.HardKill +callbacks.kill.at_epoch=1``."""

import os

from lightning.pytorch.callbacks import Callback


class HardKill(Callback):
    """Simulate a crash: ``os._exit`` (no cleanup, no checkpoint on exit) at the start of epoch
    ``at_epoch`` (after the previous epoch's checkpoints were written) or at global step
    ``at_step``."""

    def __init__(self, at_epoch: int | None = None, at_step: int | None = None, code: int = 137):
        self.at_epoch, self.at_step, self.code = at_epoch, at_step, code

    def on_train_epoch_start(self, trainer, pl_module):
        if self.at_epoch is not None and trainer.current_epoch == self.at_epoch:
            os._exit(self.code)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.at_step is not None and trainer.global_step == self.at_step:
            os._exit(self.code)
