"""``python -m jobs.rq_entry [--burst] [--queue NAME ...]``: a worker without the full CLI.

Same as ``itloop worker``; reads every setting from ``ITLOOP_*`` variables. Tests
start it as a subprocess (add ``ITLOOP_EXTRA_JOB_MODULES`` for test-only kinds).
"""

from __future__ import annotations

import argparse
import sys

from itloop.logging import configure_logging
from itloop.settings import get_settings
from jobs.runner import run_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.rq_entry", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--queue", "-q", action="append", help="queue to serve (repeatable)")
    parser.add_argument("--simple", action="store_true", help="run jobs in this process (no fork)")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    return run_worker(settings, queues=args.queue, burst=args.burst, simple=True if args.simple else None)


if __name__ == "__main__":
    sys.exit(main())
