"""Where metrics go: a JSONL file in the run directory (always) and a console progress bar.

Only rank 0 writes; other ranks get loggers that do nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan literals
    return value


class MetricsLogger:
    """Appends one JSON object per line to ``RUN_DIR/metrics.jsonl``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8") if path is not None else None

    def log(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (logged by an attempt that died before its checkpoint)."""
        if self.path is None or self._file is None:
            return
        self._file.close()
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut off by a kill
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Progress:
    """A tqdm bar over minibatches on rank 0 (stderr), showing the key numbers."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str) -> None:
        self._bar = (
            tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )
            if enabled
            else None
        )

    def update(self, n: int = 1, **postfix: float) -> None:
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
