"""`rlhfkit demo`: the whole loop, offline, on the embedded default (`pipeline`), its settings and presets
(`config`), its stage bookkeeping (`stages`) and its report sections (`report`)."""

from rlhfkit.demo.config import PRESETS, DemoConfig, resolve_preset
from rlhfkit.demo.pipeline import export_final_model, run_demo
from rlhfkit.demo.stages import STAGES, Stages

__all__ = ["PRESETS", "STAGES", "DemoConfig", "Stages", "export_final_model", "resolve_preset", "run_demo"]
