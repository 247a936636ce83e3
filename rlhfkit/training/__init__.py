"""The loops every method runs on, on accelerate.

- `runtime`: the accelerate runtime (devices, mixed precision, processes) and the optimizer;
- `supervised`: epochs of batches through a task's loss (SFT, reward models, ...);
- `online`: sample -> score -> experience -> advantages -> update (PPO, ...), with
  `online_config`, `experience`, `update` and `monitor` as its parts;
- `checkpoint`: run folders and checkpoints that resume exactly.
"""
