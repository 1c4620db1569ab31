"""Spike ingest throughput on PostgreSQL: the service path (COPY) against ORM row-by-row inserts.

A synthetic session (32 sites, ~3,000 presentations, >= 2 million spikes) is written as two
Parquet files and ingested with ``server.recordings.service.ingest_files`` (parse, validate,
group, count responses, COPY presentations / spike trains / responses, commit). The baseline
inserts one ORM object per spike into a scratch table shaped (session, site, time_s); it is
timed on a 50,000-spike subset and extrapolated linearly to the full session (stated in the
output). Goal: >= 1e6 spikes/s end to end.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Float, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_SPIKES_PER_S = 1e6


class _ScratchBase(DeclarativeBase):
    pass


class SpikeRow(_ScratchBase):
    """One row per spike: how a naive schema would store spikes."""

    __tablename__ = "bench_spike_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(String(120))
    site_id: Mapped[str] = mapped_column(String(120))
    time_s: Mapped[float] = mapped_column(Float)


def _synthetic(n_sites: int, n_pres: int, n_spikes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    onsets = 2.0 + np.arange(n_pres) * 0.4 + rng.uniform(0, 0.02, n_pres)
    span = onsets[-1] + 2.0
    site = rng.integers(0, n_sites, n_spikes)
    times = rng.uniform(0.0, span, n_spikes)
    return {"site": site, "times": times, "onsets": onsets}


def run(quick: bool = False) -> dict:
    from server.db import migrate
    from server.db.engine import get_engine, get_sessionmaker
    from server.db.provision import create_pg_database, drop_pg_database
    from server.images.tables import Image
    from server.lab.tables import Array, Site, Subject
    from server.recordings import service

    n_sites, n_pres = 32, 3000
    n_spikes = 300_000 if quick else 2_000_000
    n_orm = 10_000 if quick else 50_000
    db_name = f"itloop_bench_{uuid.uuid4().hex[:8]}"
    url = create_pg_database(db_name)
    try:
        migrate.upgrade(url)
        maker = get_sessionmaker(url)
        data = _synthetic(n_sites, n_pres, n_spikes)
        with maker() as db:
            subj = Subject(name="bench")
            db.add(subj)
            db.flush()
            arr = Array(subject_id=subj.id, name="A")
            db.add(arr)
            db.flush()
            site_ids = [f"bench-s{i:02d}" for i in range(n_sites)]
            db.add_all(Site(site_id=s, array_id=arr.id) for s in site_ids)
            hashes = [hashlib.sha256(f"img{i}".encode()).hexdigest() for i in range(300)]
            db.add_all(Image(sha256=h, width=224, height=224, n_bytes=1) for h in hashes)
            db.commit()
            rec, _ = service.create_session(session=db, session_id="bench-1", subject="bench")
            db.commit()
        with tempfile.TemporaryDirectory() as tmp:
            sp, pr = Path(tmp) / "spikes.parquet", Path(tmp) / "presentations.parquet"
            pq.write_table(
                pa.table({"site_id": np.asarray(site_ids)[data["site"]], "time_s": data["times"]}), sp
            )
            pq.write_table(
                pa.table(
                    {
                        "event_id": [f"e{i:06d}" for i in range(n_pres)],
                        "image_sha256": [hashes[i % len(hashes)] for i in range(n_pres)],
                        "onset_s": data["onsets"],
                        "fixation_ok": np.ones(n_pres, bool),
                    }
                ),
                pr,
            )
            t0 = time.perf_counter()
            with maker() as db:
                result = service.ingest_files(
                    session=db, session_id="bench-1", files={"spikes": sp, "presentations": pr}
                )
                db.commit()
            ingest_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            with maker() as db:
                again = service.ingest_files(
                    session=db, session_id="bench-1", files={"spikes": sp, "presentations": pr}
                )
                db.commit()
            repeat_s = time.perf_counter() - t0
        assert result["spikes"] == n_spikes and again["repeated"], (result, again)

        engine = get_engine(url)
        _ScratchBase.metadata.create_all(engine)
        sub_site = np.asarray(site_ids)[data["site"][:n_orm]].tolist()
        sub_t = data["times"][:n_orm].tolist()
        t0 = time.perf_counter()
        with Session(engine) as db:
            for s, t in zip(sub_site, sub_t, strict=True):
                db.add(SpikeRow(session_id="bench-1", site_id=s, time_s=t))
            db.commit()
        orm_s = time.perf_counter() - t0
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM bench_spike_rows")).scalar()
        assert stored == n_orm
        engine.dispose()
    finally:
        drop_pg_database(db_name)

    rate = n_spikes / ingest_s
    orm_rate = n_orm / orm_s
    out = {
        "backend": "postgresql",
        "n_sites": n_sites,
        "n_presentations": n_pres,
        "n_spikes": n_spikes,
        "n_responses": result["responses"],
        "ingest_s": ingest_s,
        "ingest_spikes_per_s": rate,
        "repeat_upload_s": repeat_s,
        "orm_subset_spikes": n_orm,
        "orm_subset_s": orm_s,
        "orm_spikes_per_s": orm_rate,
        "orm_extrapolated_full_s": n_spikes / orm_rate,
        "speedup": rate / orm_rate,
        "goal_spikes_per_s": GOAL_SPIKES_PER_S,
        "meets_goal": rate >= GOAL_SPIKES_PER_S,
        "quick": quick,
    }
    print(f"{'figure':<42}{'value':>16}  goal")
    print(f"{'spikes ingested (Parquet, service layer)':<42}{n_spikes:>16,d}  >= 2,000,000")
    print(f"{'responses written':<42}{result['responses']:>16,d}")
    print(f"{'ingest wall time (s)':<42}{ingest_s:>16.3f}")
    print(f"{'ingest spikes/s (end to end)':<42}{rate:>16,.0f}  >= {GOAL_SPIKES_PER_S:,.0f}")
    print(f"{'repeat upload (idempotent) (s)':<42}{repeat_s:>16.3f}")
    print(f"{f'ORM row-by-row spikes/s ({n_orm:,} subset)':<42}{orm_rate:>16,.0f}")
    print(f"{'ORM extrapolated to full session (s)':<42}{n_spikes / orm_rate:>16.1f}  (extrapolated)")
    print(f"{'speed-up over ORM':<42}{rate / orm_rate:>16.1f}x")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "bench_ingest.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    run(quick="--quick" in sys.argv)
