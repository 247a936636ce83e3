"""Compatibility layers: the names of other libraries' APIs over rlhfkit.

`rlhfkit.compat.trl` runs notebooks written for the old step-wise PPO API
(`generate` / `step(queries, responses, rewards)`) after changing only imports.
"""
