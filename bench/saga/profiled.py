"""``orderly <command>`` under cProfile with a CPU-time clock, for ``--profile-worker``.

``python -m cProfile`` times with the wall clock: on a busy two-core machine a process preempted
in the middle of a function is charged for the time it waited. This times with
``time.process_time`` (CPU seconds of this process), and starts after orderly's CLI has been
imported, so start-up imports (all compiled from source when ``PYTHONDONTWRITEBYTECODE`` is set)
stay out of the profile. The profile is written when the command exits (SIGTERM stops
``orderly worker`` cleanly).

Run by ``bench.saga.run`` as ``python -m bench.saga.profiled OUT.prof worker`` (ORDERLY_* set).
"""

from __future__ import annotations

import cProfile
import sys
import time


def main() -> None:
    out, command = sys.argv[1], sys.argv[2]
    from orderly.entrypoints.cli import main as orderly  # type: ignore[import-untyped, unused-ignore]

    sys.argv = ["orderly", command]
    profiler = cProfile.Profile(time.process_time)
    try:
        profiler.runcall(orderly)
    except SystemExit:
        pass
    finally:
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
