"""bench/simulate: long deterministic simulation campaigns of the saga under fault schedules.

    .venv/bin/python bench/simulate.py --schedules 1000000 [--start 0] [--processes 2]
    .venv/bin/python bench/simulate.py --replay SEED      # the story of one schedule

Prints schedules/s, jobs, their outcomes, the faults that fired by kind, and every violation of
I1-I5 with its seed (each replays exactly with --replay). Exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_dev.simulation.run import minimal, replay, simulate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=20_000)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--replay", type=int, help="print the story of one seed and exit")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    if args.replay is not None:
        print(replay(args.replay))
        return 0
    campaign = simulate(args.schedules, args.start, args.processes)
    rate = campaign.schedules / campaign.seconds
    print(f"schedules   {campaign.schedules} (seeds {args.start}..{args.start + args.schedules - 1})")
    print(f"time        {campaign.seconds:.1f} s on {args.processes} processes: {rate:.0f} schedules/s")
    print(f"jobs        {campaign.jobs}: {dict(campaign.outcomes.most_common())}")
    print(f"faults      {sum(campaign.faults.values())}: {dict(campaign.faults.most_common())}")
    violations = sum(len(v) for v in campaign.failing.values())
    print(f"violations  {violations} in {len(campaign.failing)} schedules")
    for seed, lines in list(campaign.failing.items())[:20]:
        print(f"  seed {seed}: {'; '.join(lines)}")
    if campaign.failing:
        print(
            "\nthe first failing seed, with the fewest kinds of fault:\n"
            + minimal(next(iter(campaign.failing)))
        )
    return 1 if campaign.failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
