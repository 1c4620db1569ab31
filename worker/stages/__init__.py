"""The science stages of the night, registered as job kinds (owned by the pipeline engineers).

Each module here registers one or more of the kinds wired by :mod:`worker.night`
(``night.responses``, ``night.refit``, ``night.select``, ``night.synthesize``,
``night.assemble``, ``night.schedule``, ``night.publish``, ``night.analyze``) and
is imported from this ``__init__`` so that importing ``worker.stages`` registers
them all::

    from jobs.context import JobContext
    from jobs.registry import job

    @job("night.refit", queue="itloop-gpu", timeout_s=3 * 3600, max_attempts=2)
    def refit(ctx: JobContext) -> dict:
        candidate = ctx.params["candidate"]
        with ctx.session() as session:
            ...                        # read the day's responses, write a ModelVersion
        ctx.progress(0.5, "ridge CV")  # throttled write; raises JobCancelled / JobTimeout
        return {"model_version_id": 12, "score": 0.61}   # JSON-able; stored on the job row

Rules: functions are module-level and take only the context; heavy imports
(torch, models.*) go inside the function; use ``ctx.device()`` for the torch
device; call ``ctx.progress`` or ``ctx.check_cancelled`` in long loops; write
objects through ``ctx.store``. ``night.select`` fans out synthesis by returning
``{"shards": [{...}, ...]}``: one ``night.synthesize`` job runs per shard.

A stage loads (rows, the night's shared data from :mod:`worker.stages.night_data`, pixels),
makes one call into ``models/`` (the science: fitting, case planning, synthesis, sensitivity)
and stores what comes back; science written here instead belongs in ``models/``.
"""

from worker.stages import analyze, choose, fit, publish, synth  # noqa: F401  (registers the kinds)
