"""One module per method, holding its config and the wiring of a loop and its objectives.

- `ppo`: PPO (online loop; gae advantages, clipped surrogate, critic, KL in the reward);
- `sft`: supervised fine-tuning (supervised loop; NLL of completion tokens);
- `reward`: Bradley-Terry reward models (supervised loop; pairwise loss).
"""
