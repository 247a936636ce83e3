import os

import pytest

# Quiet library progress bars in test logs; embedded models build once into the user cache.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (dicts or raw strings) to a JSONL file in tmp_path and return its path."""
    import json

    def _write(rows, name="data.jsonl"):
        path = tmp_path / name
        with path.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
        return path

    return _write
