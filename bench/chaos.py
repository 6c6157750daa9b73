"""bench/chaos: long fault campaigns: jobs/min under faults, faults injected, violations, heal time.

    .venv/bin/python bench/chaos.py --jobs 1000 --seed 7

The same as ``aijobs chaos`` with more jobs (it prints the campaign's report and exits non-zero
on any violation).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.chaos import main

if __name__ == "__main__":
    started = time.monotonic()
    argv = sys.argv[1:] or ["--jobs", "1000", "--seed", "7"]
    code = main(argv)
    jobs = int(argv[argv.index("--jobs") + 1]) if "--jobs" in argv else 50
    minutes = (time.monotonic() - started) / 60
    rate = jobs / minutes
    print(f"bench/chaos: {jobs} jobs in {minutes:.1f} min wall (stack start included) = {rate:.0f} jobs/min")
    sys.exit(code)
