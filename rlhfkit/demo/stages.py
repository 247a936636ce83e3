"""The demo's stage bookkeeping: each stage runs once per settings (and upstream stages), in its own folder
with a `stage.json` marker of what it ran with and how long it took; `--from STAGE` redoes it and all after."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

STAGES = ("generate", "label", "reward", "train", "eval", "compress", "report")  # "train": one stage per method


class Stages:
    """Run each stage once per settings; record what it ran with and how long it took."""

    def __init__(self, root: Path, redo_from: str | None, methods=()):
        self.root, self.methods = root, tuple(methods)
        self.redo: set[str] = set()
        if redo_from:
            self.redo = {redo_from} | self._after(redo_from)
        self.keys: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def folder(self, stage: str) -> Path:
        return self.root / stage

    def _after(self, stage: str) -> set[str]:
        """The stages downstream of `stage` (every method's stage is downstream of the reward model)."""
        level = "train" if stage not in STAGES else stage
        later = set(STAGES[STAGES.index(level) + 1:])
        return later | (set(self.methods) if STAGES.index(level) < STAGES.index("train") else set())

    def run(self, stage: str, settings: dict, upstream: tuple[str, ...], work) -> Path:
        folder = self.folder(stage)
        key_src = json.dumps({"settings": settings, "upstream": [self.keys[u] for u in upstream]}, sort_keys=True, default=str)
        key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        self.keys[stage] = key
        marker = folder / "stage.json"
        if stage not in self.redo and marker.exists() and json.loads(marker.read_text()).get("key") == key:
            print(f"rlhfkit demo: [{stage}] reusing {folder}")
            self.timings[stage] = json.loads(marker.read_text()).get("seconds", 0.0)
            return folder
        if marker.exists():
            marker.unlink()
        # Anything downstream of a stage that runs again must run again too.
        self.redo |= self._after(stage)
        print(f"rlhfkit demo: [{stage}] running")
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        work(folder)
        seconds = time.perf_counter() - start
        self.timings[stage] = seconds
        marker.write_text(json.dumps({"key": key, "settings": settings, "seconds": seconds}, indent=1, default=str))
        print(f"rlhfkit demo: [{stage}] done in {seconds:.0f}s")
        return folder
