"""Hostile input over HTTP: refused early, with a clear 4xx, bounded memory, and stored data unchanged.

(a) A body-carrying request with no token, a malformed or an unknown one is answered 401 before
    a byte of its body is read, on every kind of route (JSON, NDJSON, multipart upload); each
    route kind has its own body limit (``max_json_bytes``, ``max_upload_bytes``).
(b) Decompression bombs (a Parquet file declaring 30 M rows, an NWB file whose spike_times dataset
    declares 2.4 GB in a few kB of chunks, a PNG declaring 64 Mpx) are 422 with the server's peak
    memory growing by at most 256 MB, measured in a fresh process (peak RSS reset before each).
(c) Concurrent uploads to one session, through a real uvicorn server on both backends: identical
    ones answer 200 (one stores, the others say ``repeated``); different ones, one 200 and 409s.
(d) Bad values that were 500s: a CSV header or field over 128 KiB, event ids over 120 characters or
    holding a NUL byte (CSV, Parquet, /presentations), deeply nested JSON; onsets that are negative,
    non-finite or absurd; an event id repeated with other content (409). Counted before and after.
(e) A CSV cut off mid-row is refused even with ``replace=true``; a UTF-8 BOM is fine; error texts
    show no numpy reprs and no server paths; upload folders go away on any exit and stale ones
    (their process killed) are swept at startup.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from demo.server import BackgroundServer
from itloop.settings import Settings
from server.auth import service as auth_service
from server.db.engine import session_scope
from server.recordings.tables import RigEvent
from server.uploads import PREFIX, sweep_stale_uploads
from tests.conftest import make_settings
from tests.server.test_recordings_helpers import (
    Synthetic,
    create_session,
    make_lab,
    row_counts,
    synth,
    upload,
    write_csv,
    write_nwb,
    write_parquet,
)

API = "/api/v1"
MB = 1024 * 1024
MEMORY_BOUND = 256 * MB


def _json_4xx(r: httpx.Response, status: int | None = None) -> str:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    assert (
        "np.float64" not in detail and "itloop-upload" not in detail and tempfile.gettempdir() not in detail
    )
    return detail


# -- (a) the token before the body -------------------------------------------------------------


def _post_lazily(app: Any, url: str, size: int, headers: dict[str, str]) -> tuple[httpx.Response, int, float]:
    """POST a ``size``-byte body generated only as the app pulls it; returns (response, bytes pulled, s)."""
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        block = b"[" + b"0," * (MB // 2 - 1) + b"0"
        for _ in range(size // len(block)):
            pulled += len(block)
            yield block

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://itloop") as http:
            return await http.post(url, content=chunks(), headers=headers)

    start = time.perf_counter()
    response = asyncio.run(post())
    return response, pulled, time.perf_counter() - start


BODY_ROUTES = [
    ("/batches/some-batch/presentations", "application/json"),
    ("/batches/some-batch/presentations", "application/x-ndjson"),
    ("/subjects", "application/json"),
    ("/sessions/some-session/spikes", "multipart/form-data; boundary=xyz"),
    ("/image-sets", "multipart/form-data; boundary=xyz"),
    ("/tokens/abcdefgh", "application/json"),
]


def test_no_valid_token_is_refused_before_the_body_is_read(client, auth) -> None:  # type: ignore[no-untyped-def]
    size = 100 * MB
    credentials = [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer itl_not-a-token-anyone-was-given"]
    for route, content_type in BODY_ROUTES:
        for credential in credentials:
            for declared in (True, False):
                headers = {"Content-Type": content_type}
                if credential is not None:
                    headers["Authorization"] = credential
                if declared:
                    headers["Content-Length"] = str(size)
                r, pulled, seconds = _post_lazily(client.app, API + route, size, headers)
                where = (route, credential, declared)
                assert r.status_code == 401, (where, r.status_code, r.text[:200])
                assert r.headers["www-authenticate"] == "Bearer", where
                assert r.headers["connection"] == "close", where
                _json_4xx(r, 401)
                assert pulled == 0, (where, pulled)  # not one byte of the body was read
                assert seconds < 2.0, (where, seconds)
    # The role check stays with the route: a valid token of the wrong role is 403, body unread too
    # when it is over the route's limit.
    r = client.post(f"{API}/subjects", json={"name": f"s-{uuid.uuid4().hex[:6]}"}, headers=auth("rig"))
    _json_4xx(r, 403)


def test_each_kind_of_route_has_its_own_body_limit(client, auth, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    settings.max_json_bytes = 64 * 1024
    settings.max_upload_bytes = 4 * MB
    headers = {**auth("rig"), "Content-Type": "application/json", "Content-Length": str(MB)}
    r, pulled, _ = _post_lazily(client.app, f"{API}/batches/b/presentations", MB, headers)
    detail = _json_4xx(r, 413)
    assert "max_json_bytes" in detail and str(64 * 1024) in detail and pulled == 0
    # The same megabyte is within an upload route's limit: read, then refused for what it is.
    headers = {**auth("experimenter"), "Content-Type": "multipart/form-data; boundary=xyz"}
    r, pulled, _ = _post_lazily(client.app, f"{API}/sessions/no-such-session/spikes", MB, headers)
    assert r.status_code != 413 and pulled >= MB - 2, (r.status_code, pulled)
    _json_4xx(r)
    r, pulled, _ = _post_lazily(
        client.app,
        f"{API}/sessions/no-such-session/spikes",
        8 * MB,
        {**headers, "Content-Length": str(8 * MB)},
    )
    detail = _json_4xx(r, 413)
    assert "max_upload_bytes" in detail and pulled == 0


# -- (b) decompression bombs -------------------------------------------------------------------

PROBE = r"""
import json, sys
from pathlib import Path
# Warm imports first: the growth measured is the request's own, not a library's first load.
import h5py, pynwb, pyarrow.parquet, PIL.Image  # noqa: F401
from fastapi.testclient import TestClient
from itloop.settings import Settings
from server.app import create_app

url, data_dir, token, cases = sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

settings = Settings(env="test", database_url=url, data_dir=data_dir, rig_time="",
                    store_url=(data_dir / "store").resolve().as_uri())
out = []
with TestClient(create_app(settings)) as client:
    client.get("/api/v1/health")
    for name, route, parts, *form in cases:
        files = [(field, (Path(p).name, Path(p).read_bytes())) for field, p in parts]
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = status("VmRSS:")
        data = form[0] if form else {}
        r = client.post(route, files=files, data=data, headers={"Authorization": f"Bearer {token}"})
        out.append({"name": name, "status": r.status_code, "body": r.text[:400],
                    "growth": status("VmHWM:") - before})
print(json.dumps(out))
"""


def _parquet_bomb(folder: Path, site: str, rows: int = 30_000_000) -> Path:
    """30 M identical spike rows: run-length and dictionary encoded into a few kB."""
    path = folder / "bomb-spikes.parquet"
    block = pa.table(
        {
            "site_id": pa.array([site] * 1_000_000).dictionary_encode(),
            "time_s": pa.array(np.full(1_000_000, 1.5)),
        }
    )
    with pq.ParquetWriter(path, block.schema, compression="zstd") as writer:
        for _ in range(rows // 1_000_000):
            writer.write_table(block)
    return path


def _nwb_bomb(folder: Path, data: Synthetic, rows: int = 300_000_000) -> Path:
    """A valid NWB file whose units' spike_times declares ``rows`` doubles (2.4 GB) it never stored.

    The chunks are unallocated, so reading the dataset yields its fill value: a perfect compressor.
    """
    path = write_nwb(folder / "bomb.nwb", data)
    with h5py.File(path, "a") as f:
        units = f["units"]
        times_attrs = dict(units["spike_times"].attrs)
        index_attrs = dict(units["spike_times_index"].attrs)
        n_units = units["spike_times_index"].shape[0]
        del units["spike_times"], units["spike_times_index"]
        times = units.create_dataset(
            "spike_times", shape=(rows,), dtype="f8", chunks=(1 << 20,), compression="gzip", fillvalue=1.5
        )
        for key, value in times_attrs.items():
            times.attrs[key] = value
        ends = np.linspace(rows // n_units, rows, n_units).astype(np.uint64)
        index = units.create_dataset("spike_times_index", data=ends)
        for key, value in index_attrs.items():
            index.attrs[key] = times.ref if isinstance(value, h5py.Reference) else value
    return path


def _png_bomb(folder: Path, width: int = 8000, height: int = 8000) -> Path:
    """An 8000x8000 RGB PNG of zeros (64 Mpx, 192 MB of pixels) in a few hundred kB, streamed."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path = folder / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bombs_are_refused_within_256_mb(
    backend: str, fresh_db_url: str, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("the readers' memory does not depend on the database; one backend is enough")
    with session_scope(fresh_db_url) as db:
        lab = make_lab(db)
        user = auth_service.create_user(session=db, name="bomb-experimenter", role="experimenter")
        token = auth_service.create_token(session=db, user=user)
    data = synth(lab, seed=1)
    valid = write_parquet(tmp_path / "valid", data)
    parquet = _parquet_bomb(tmp_path, lab.site_ids[0])
    nwb = _nwb_bomb(tmp_path, data)
    png = _png_bomb(tmp_path)
    assert max(parquet.stat().st_size, nwb.stat().st_size, png.stat().st_size) < MB
    settings = make_settings(fresh_db_url, tmp_path / "data")
    with BackgroundServer(settings) as server:  # the session the uploads go to
        r = httpx.post(
            f"{server.url}{API}/sessions",
            json={"session_id": lab.sid, "subject": lab.subject},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 201, r.text
    spikes_route = f"{API}/sessions/{lab.sid}/spikes"
    cases = [
        [
            "parquet",
            spikes_route,
            [["spikes", str(parquet)], ["presentations", str(valid["presentations"])]],
            {},
        ],
        ["nwb", spikes_route, [["file", str(nwb)]], {}],
        ["png", f"{API}/image-sets", [["files", str(png)]], {"name": "bombs"}],
    ]
    before = row_counts_at(fresh_db_url)
    env = {**os.environ, "ITLOOP_ENV": "test", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, fresh_db_url, str(tmp_path / "data"), token, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    results = json.loads(probe.stdout.strip().splitlines()[-1])
    for result in results:
        assert result["status"] == 422, result
        assert result["growth"] <= MEMORY_BOUND, result
    details = {r["name"]: json.loads(r["body"])["detail"] for r in results}
    assert "30000000 rows" in details["parquet"] and "decompression bomb" in details["parquet"]
    assert "decompression bomb" in details["nwb"]
    assert "8000x8000" in details["png"]
    assert row_counts_at(fresh_db_url) == before


def row_counts_at(url: str) -> dict[str, int]:
    from server.images.tables import Image, ImageSet

    with session_scope(url) as db:
        counts = row_counts(db)
        counts["images"] = int(db.scalar(select(func.count()).select_from(Image)) or 0)
        counts["image_sets"] = int(db.scalar(select(func.count()).select_from(ImageSet)) or 0)
    return counts


# -- (c) concurrent uploads ----------------------------------------------------------------------


def _concurrently(n: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = call(i)
        except Exception as exc:  # reported by the assertion below
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, httpx.Response) for r in out), out
    return out


def test_concurrent_uploads_to_one_session(fresh_db_url: str, tmp_path: Path) -> None:
    with session_scope(fresh_db_url) as db:
        lab = make_lab(db, n_sites=8, n_images=20)
        user = auth_service.create_user(session=db, name="uploader", role="experimenter")
        token = auth_service.create_token(session=db, user=user)
    headers = {"Authorization": f"Bearer {token}"}
    payloads = []
    for i in range(3):
        files = write_parquet(tmp_path / f"d{i}", synth(lab, seed=i, n_pres=600))
        payloads.append({k: (p.name, p.read_bytes()) for k, p in files.items()})
    with BackgroundServer(make_settings(fresh_db_url, tmp_path / "data")) as server:
        with httpx.Client(base_url=server.url + API, headers=headers, timeout=120) as http:
            for sid in ("same", "different"):
                r = http.post("/sessions", json={"session_id": sid, "subject": lab.subject})
                assert r.status_code == 201, r.text

            same = _concurrently(3, lambda i: http.post("/sessions/same/spikes", files=payloads[0]))
            assert [r.status_code for r in same] == [200] * 3, [r.text[:200] for r in same]
            assert sorted(r.json()["repeated"] for r in same) == [False, True, True]
            assert (
                len({json.dumps({k: v for k, v in r.json().items() if k != "repeated"}) for r in same}) == 1
            )
            stored_once = row_counts_at(fresh_db_url)

            different = _concurrently(3, lambda i: http.post("/sessions/different/spikes", files=payloads[i]))
            codes = sorted(r.status_code for r in different)
            assert codes == [200, 409, 409], [r.text[:200] for r in different]
            for r in different:
                if r.status_code == 409:
                    assert "replace=true" in _json_4xx(r, 409)
            winner = next(r for r in different if r.status_code == 200).json()
    after = row_counts_at(fresh_db_url)
    assert after["presentations"] == stored_once["presentations"] + winner["presentations"]
    assert after["responses"] == stored_once["responses"] + winner["responses"]


# -- (d) bad values ------------------------------------------------------------------------------


def _write(folder: Path, name: str, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_bad_csv_and_parquet_values_are_clean_422s(client, auth, db_session: Session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=2)
    good = write_csv(tmp_path / "good", data)
    pres = good["presentations"].read_text().splitlines()
    spikes = good["spikes"].read_text().splitlines()
    before = row_counts(db_session)

    def post(files: dict[str, Path], **params: Any) -> str:
        return _json_4xx(upload(client, auth, lab.sid, files, **params), 422)

    wide = "x" * (200 * 1024)
    # A header field over 128 KiB (the csv module's own limit).
    f = _write(tmp_path / "h", "spikes.csv", f"site_id,time_s,{wide}\n" + "\n".join(spikes[1:]) + "\n")
    assert "first line is longer" in post({**good, "spikes": f})
    # A data field over 128 KiB.
    f = _write(tmp_path / "f", "spikes.csv", "\n".join([*spikes[:3], f"{wide},1.0", *spikes[3:]]) + "\n")
    assert "204800 characters" in post({**good, "spikes": f})
    # Event ids: 121 characters; a NUL byte; a tab.
    for bad_id, words in (
        ("e" * 121, "121 characters"),
        ("ev\x00nul", "control character"),
        ("a\tb", "control"),
    ):
        rows = [pres[0], pres[1].replace(data.event_ids[0], bad_id, 1), *pres[2:]]
        f = _write(tmp_path / "e", "presentations.csv", "\n".join(rows) + "\n")
        assert words in post({**good, "presentations": f})
    # The same in Parquet (NUL bytes are valid UTF-8 there), and a site id of 200 characters.
    table = pa.table(
        {
            "event_id": ["e\x00x", *data.event_ids[1:]],
            "image_sha256": data.images,
            "onset_s": data.onsets,
        }
    )
    pq.write_table(table, tmp_path / "p.parquet")
    assert "control character" in post({**good, "presentations": tmp_path / "p.parquet"})
    sp = pa.table({"site_id": ["s" * 200] + data.site.tolist()[1:], "time_s": data.times})
    pq.write_table(sp, tmp_path / "s.parquet")
    assert "200 characters" in post({**good, "spikes": tmp_path / "s.parquet"})
    # Non-finite spike times: a number in words, never a numpy repr.
    f = _write(
        tmp_path / "i", "spikes.csv", "\n".join([*spikes[:2], f"{lab.site_ids[0]},inf", *spikes[2:]]) + "\n"
    )
    detail = post({**good, "spikes": f})
    assert "inf" in detail and "np." not in detail
    # Server paths never show: a damaged Parquet and a damaged NWB file.
    f = _write(tmp_path / "d", "spikes.parquet", b"PAR1" + b"\x00" * 100 + b"PAR1")
    post({**good, "spikes": f})
    nwb = write_nwb(tmp_path / "n" / "t.nwb", data)
    nwb.write_bytes(nwb.read_bytes()[: nwb.stat().st_size // 2])
    post({"file": nwb})
    assert row_counts(db_session) == before


def test_truncated_csv_is_refused_even_with_replace_and_a_bom_is_fine(
    client, auth, db_session: Session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=4)
    files = write_csv(tmp_path / "a", data)
    # A UTF-8 byte-order mark (Excel's "CSV UTF-8") before both headers.
    for name in files:
        files[name].write_bytes(b"\xef\xbb\xbf" + files[name].read_bytes())
    r = upload(client, auth, lab.sid, files)
    assert r.status_code == 200, r.text
    stored = row_counts(db_session)
    # Cut off mid-row: "site,12.3456" becomes "site,12.3" -- still numbers, one spike moved.
    other = write_csv(tmp_path / "b", synth(lab, seed=5))
    raw = other["spikes"].read_bytes().rstrip(b"\n")
    other["spikes"].write_bytes(raw[:-3])
    detail = _json_4xx(upload(client, auth, lab.sid, other, replace="true"), 422)
    assert "truncated" in detail and "spikes" in detail
    assert row_counts(db_session) == stored
    # Complete, the same file replaces the data.
    other["spikes"].write_bytes(raw + b"\n")
    r = upload(client, auth, lab.sid, other, replace="true")
    assert r.status_code == 200 and r.json()["replaced"] is True, r.text


def test_presentation_events_hostile_values(
    client, rig_auth, db_session: Session, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    from itloop.storage import get_store
    from tests.server.test_batches import make_batch, make_rig

    rig_id = make_rig(db_session)
    batch = make_batch(db_session, get_store(settings.resolved_store_url), rig_id=rig_id)
    db_session.commit()
    published = batch.manifest
    assert published is not None
    bid = published["batch_id"]

    def auth(_role: str) -> dict[str, str]:
        return rig_auth(rig_id)  # a rig token acts only for its own rig

    url = f"{API}/batches/{bid}/presentations"
    seq = published["sequence"]
    event = {"event_id": f"{bid}:0", "seq": 0, "image_sha256": seq[0]["image_sha256"], "onset_s": 1.25}

    def stored() -> int:
        db_session.expire_all()
        return int(
            db_session.scalar(
                select(func.count()).select_from(RigEvent).where(RigEvent.event_id.like(f"{bid}%"))
            )
            or 0
        )

    r = client.post(url, json=[event], headers=auth("rig"))
    assert r.json() == {"received": 1, "new": 1, "repeated": 0}, r.text
    bad_values = [
        {"onset_s": -0.5},
        {"onset_s": 1e308},
        {"event_id": "x" * 121},
        {"event_id": "nul\x00byte"},
        {"event_id": ""},
    ]
    for change in bad_values:
        _json_4xx(
            client.post(url, json=[{**event, "event_id": f"{bid}:new", **change}], headers=auth("rig")), 422
        )
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = (
            f'[{{"event_id": "{bid}:nan", "image_sha256": "{event["image_sha256"]}", "onset_s": {literal}}}]'
        )
        headers = {**auth("rig"), "Content-Type": "application/json"}
        _json_4xx(client.post(url, content=body, headers=headers), 422)
    # Deeply nested JSON: a RecursionError in the parser, now a 422 (JSON and NDJSON).
    deep = "[" * 100_000 + "]" * 100_000
    headers = {**auth("rig"), "Content-Type": "application/json"}
    assert "nested too deeply" in _json_4xx(client.post(url, content=deep, headers=headers), 422)
    headers = {**auth("rig"), "Content-Type": "application/x-ndjson"}
    assert "line 1" in _json_4xx(client.post(url, content=deep + "\n", headers=headers), 422)
    # Other JSON routes (parsed by FastAPI) answer a 4xx too.
    r = client.post(
        f"{API}/subjects", content=deep, headers={**auth("experimenter"), "Content-Type": "application/json"}
    )
    _json_4xx(r)
    assert stored() == 1
    # The same event again: repeated. Different content under the same id: 409, nothing stored.
    r = client.post(url, json=[event], headers=auth("rig"))
    assert r.json() == {"received": 1, "new": 0, "repeated": 1}
    for change in (
        {"onset_s": 2.5},
        {"fixation_ok": False},
        {"seq": 1, "image_sha256": seq[1]["image_sha256"]},
    ):
        fresh = {**event, "event_id": f"{bid}:fresh"}
        r = client.post(url, json=[fresh, {**event, **change}], headers=auth("rig"))
        detail = _json_4xx(r, 409)
        assert f"{bid}:0" in detail and "different content" in detail
    # Twice in one request with different content: 409 as well.
    twice = [{**event, "event_id": f"{bid}:9"}, {**event, "event_id": f"{bid}:9", "onset_s": 9.0}]
    assert "earlier in this request" in _json_4xx(client.post(url, json=twice, headers=auth("rig")), 409)
    assert stored() == 1


# -- (e) upload folders --------------------------------------------------------------------------


def _own_upload_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"{PREFIX}{os.getpid()}-*")}


def test_upload_folders_are_removed_on_any_exit(client, auth, db_session: Session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    files = write_csv(tmp_path, synth(lab, seed=6))
    before = _own_upload_folders()
    assert upload(client, auth, lab.sid, files).status_code == 200
    _json_4xx(upload(client, auth, lab.sid, {"spikes": files["spikes"]}), 422)
    # The client goes away mid-body: the request ends with an exception inside the route.
    body = b"--xyz\r\nContent-Disposition: form-data; name=spikes; filename=s.csv\r\n\r\n" + b"a,1\n" * 50_000
    messages = [{"type": "http.request", "body": body, "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []
    token = auth("experimenter")["Authorization"].encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"{API}/sessions/{lab.sid}/spikes",
        "raw_path": f"{API}/sessions/{lab.sid}/spikes".encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"itloop"),
            (b"authorization", token),
            (b"content-type", b"multipart/form-data; boundary=xyz"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("itloop", 80),
    }

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        try:
            await client.app(scope, receive, send)
        except Exception:  # a disconnect may surface as an exception; the folder matters
            pass

    asyncio.run(call())
    assert _own_upload_folders() == before


def test_stale_upload_folders_are_swept_at_startup(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    root = tmp_path / "tmp"
    stale = root / f"{PREFIX}{dead_pid}-abc"
    live = root / f"{PREFIX}{os.getpid()}-def"
    old_layout = root / f"{PREFIX}xyz123"
    for folder in (stale, live, old_layout):
        folder.mkdir(parents=True)
        (folder / "body").write_bytes(b"x" * 1000)
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old_layout, (day_ago, day_ago))
    assert sweep_stale_uploads(root) == 2
    assert not stale.exists() and not old_layout.exists() and live.exists()


def test_the_app_sweeps_when_it_starts(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f"{PREFIX}{int(gone.stdout)}-left"
    stale.mkdir()
    with TestClient(create_app(settings)) as c:
        assert c.get(f"{API}/health").status_code == 200
    assert not stale.exists()
