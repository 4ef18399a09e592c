"""Training that produces checkpoints (SPEC S6, S7): the continual trainer on permuted tasks, or plain training
on an image folder, with its resumable output folder (`loop.py`: `train`, `TrainConfig`), and continual
backprop's online utilities and reset schedule (`cbp.py`: `ContinualBackprop`, `CBPConfig`). The zoo and CBP's
reset operator live below, in models/, so the assay never imports the trainer.
"""

from resetassay.train.cbp import CBPConfig, ContinualBackprop
from resetassay.train.loop import TrainConfig, TrainingFailed, last_checkpoint, train, zoo_kwargs

__all__ = ["CBPConfig", "ContinualBackprop", "TrainConfig", "TrainingFailed", "last_checkpoint", "train",
           "zoo_kwargs"]
