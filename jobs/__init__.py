"""The job system: one package, depending only on the database layer (``server.db`` and the job tables).

The database's ``jobs`` table is the truth; a queue only carries job ids.

=================  ==========================================================================
``state``          the entry point: submit, read and cancel jobs; re-exports the modules below
``handoff``        tickets collected on a session and enqueued after it commits
``locking``        the SQLite write lock and the compare-and-set on job rows
``lease``          claim, heartbeat and outcome of an attempt, fenced by its number
``dependencies``   the DAG: waiting jobs released or failed as their dependencies settle
``nights``         a night's state derived from its jobs
``recovery``       the rows side of the reaper: stale running jobs, queued jobs to re-send
``beats``          worker liveness rows
``registry``       job kinds: ``@job("kind", queue=..., timeout_s=..., max_attempts=...)``
``queue``          runners behind one interface (in-process pool, RQ) and the after-commit
                   hand-over of new queued jobs to the runner
``context``        what a job function gets (``JobContext``): params, sessions, store, progress
``execute``        run one job by id: claim, heartbeat, record the outcome
``reaper``         re-queue jobs of dead workers, re-enqueue what a queue lost
``liveness``       liveness beats and the embedded server's periodic reaper
``runner``         ``itloop worker``: RQ or DB-polling worker processes
``config``         worker tunables (``ITLOOP_*``)
=================  ==========================================================================

Job kinds are registered by the modules named in ``ITLOOP_JOB_MODULES`` (the night:
``worker.night`` and ``worker.stages``); this package never imports them by name. ``server/``
does not import this package: HTTP routes go through the seam :mod:`worker.api`.
"""

from jobs import queue as _queue  # noqa: F401  (installs the after-commit enqueue listener)
