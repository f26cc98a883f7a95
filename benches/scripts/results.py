"""Reading loadgen's result files (one JSON object a line, as `loadgen --out FILE`
appends them): shared by plot.py and report.py."""

import os
import sys


def load(paths, keep=lambda rec: True):
    """Every record of the existing files among `paths` that `keep` accepts, in order.
    A line that is not JSON ends the program, naming the file and line."""
    import json

    records = []
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: not JSON: {e}")
                if keep(rec):
                    records.append(rec)
    return records
