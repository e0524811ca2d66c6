"""Training: triplet sampling, the resumable early-stopping loop, checkpoints."""
from .checkpoint import config_diff, load_checkpoint, save_checkpoint
from .sampling import BPRSampler
from .trainer import (Interrupted, TrainConfig, Trainer, TrainResult, default_batch_size,
                      result_notes, seed_everything)

__all__ = ["BPRSampler", "TrainConfig", "Trainer", "TrainResult", "Interrupted", "seed_everything",
           "default_batch_size", "result_notes", "save_checkpoint", "load_checkpoint",
           "config_diff"]
