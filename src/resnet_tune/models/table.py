"""The model table: every registered preset's :func:`~resnet_tune.models.model_info`, precomputed.

``resnet-tune models`` reads ``model_table.json`` (beside this file) instead of building every preset, so it
answers without importing PyTorch. A test checks that the file equals :func:`model_table`; after adding or
changing a preset, regenerate it with ``python -m resnet_tune.models.table``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("model_table.json")


def model_table() -> list[dict[str, Any]]:
    """``model_info(name).to_dict()`` of every registered model, in registration order (JSON types)."""
    from . import list_models, model_info

    return json.loads(json.dumps([model_info(n).to_dict() for n in list_models()]))


def write_table(path: Path = TABLE) -> Path:
    rows = ",\n".join(json.dumps(row) for row in model_table())  # one model a line: readable diffs
    path.write_text(f"[\n{rows}\n]\n", encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover - the regeneration command
    print(f"wrote {write_table()}")
