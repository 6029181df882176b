"""The GPU scripts' progress log: each record gets the seconds since the script started, is printed as one JSON line
and appended to a JSONL file under $OUT as it is made, so that a device call stopped at its time limit still brings
back every record written so far."""

from __future__ import annotations

import json
import time
from pathlib import Path


class JsonlLog:
    """`emit(record)`: print it and append it to `path` (None: print only, until a script sets `path`)."""

    def __init__(self, path: Path | None = None, t0: float | None = None) -> None:
        self.path = path
        self.t0 = time.time() if t0 is None else t0

    def emit(self, rec: dict) -> None:
        rec = {"t": round(time.time() - self.t0, 1), **rec}
        line = json.dumps(rec, default=str)
        print(line, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(line + "\n")
