"""Moved to `rlhfkit.training.checkpoint` (generic over loops); these names stay for old imports."""

from rlhfkit.training.checkpoint import OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, find_checkpoint


def save_checkpoint(trainer, folder):
    return trainer.save(folder)


def load_checkpoint(trainer, folder) -> None:
    trainer.load_state(folder)


def save_final_model(trainer, folder) -> None:
    trainer.save_pretrained(folder)


__all__ = ["OPTIMIZER_FILE", "STATE_FILE", "WEIGHTS_FILE", "find_checkpoint", "load_checkpoint", "save_checkpoint",
           "save_final_model"]
