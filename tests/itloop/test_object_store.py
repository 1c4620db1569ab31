"""One contract for every object store: a local folder and S3 (moto's server, a real HTTP endpoint).

The same tests run against :class:`LocalStore` and an :class:`FsspecStore` on
``s3://`` served by ``moto.server.ThreadedMotoServer`` on a free port, so what
passes here behaves the same on a lab's MinIO. The crash tests kill a writer
process with SIGKILL in the middle of an upload and check that no object became
visible at its key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from itloop.sha256 import sha256_hex
from itloop.storage import (
    STORE_OPTIONS_ENV,
    FsspecStore,
    LocalStore,
    ObjectStore,
    StoreError,
    image_key,
    open_store,
)

ROOT = Path(__file__).resolve().parents[2]
ACCESS = {"key": "itloop-test", "secret": "itloop-test-secret"}
PART = 5 * 2**20  # S3's smallest multipart part


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """An S3 API on a free local port, for this module only."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_options(endpoint: str) -> dict[str, object]:
    return {"endpoint_url": endpoint, **ACCESS, "skip_instance_cache": True}


def new_bucket(endpoint: str) -> str:
    import boto3

    name = f"itloop-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS["key"],
        aws_secret_access_key=ACCESS["secret"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    return name


def boto(endpoint: str):  # a boto3 S3 client
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS["key"],
        aws_secret_access_key=ACCESS["secret"],
        region_name="us-east-1",
    )


@pytest.fixture(params=["local", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], ObjectStore]:
    """``make_store(name)``: a fresh, empty store of the parametrised kind; same name, same store."""
    if request.param == "local":
        return lambda name: LocalStore(tmp_path / name)
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = new_bucket(endpoint)
    return lambda name: FsspecStore(f"s3://{bucket}/{name}", part_size=PART, **s3_options(endpoint))


@pytest.fixture
def store(make_store: Callable[[str], ObjectStore]) -> ObjectStore:
    return make_store("store")


def test_round_trip_overwrite_and_empty_objects(store: ObjectStore) -> None:
    data = bytes(range(256)) * 40
    key = image_key(sha256_hex(data))
    assert not store.exists(key)
    store.put(key, data)
    assert store.exists(key) and store.get(key) == data
    store.put(key, b"second version")
    assert store.get(key) == b"second version"
    store.put("empty/object.bin", b"")
    assert store.exists("empty/object.bin") and store.get("empty/object.bin") == b""


def test_large_object_round_trip(store: ObjectStore) -> None:
    """Big enough for a multipart upload on S3 (three parts), which must reassemble byte-exactly."""
    data = os.urandom(2 * PART + 12345)
    store.put("models/big.pt", data)
    assert store.get("models/big.pt") == data
    assert store.list("models") == ["models/big.pt"]


def test_listing_is_by_folder_and_sorted(store: ObjectStore) -> None:
    keys = ["images/ab/x.png", "images/aa/y.png", "images2/z.png", "checkpoints/m.pt", "top.json"]
    for k in keys:
        store.put(k, k.encode())
    assert store.list() == sorted(keys)
    assert store.list("images") == ["images/aa/y.png", "images/ab/x.png"]  # not images2/
    assert store.list("images/") == store.list("images")
    assert store.list("images/ab") == ["images/ab/x.png"]
    assert store.list("nothing/here") == []
    assert not store.exists("images")  # a folder is not an object
    with pytest.raises(KeyError):
        store.get("images")


def test_stores_under_neighbouring_prefixes_do_not_see_each_other(
    make_store: Callable[[str], ObjectStore],
) -> None:
    a, ab = make_store("a"), make_store("ab")
    a.put("k/one", b"1")
    ab.put("k/two", b"2")
    assert a.list() == ["k/one"] and ab.list() == ["k/two"]
    assert not a.exists("k/two")
    assert make_store("a").get("k/one") == b"1"  # a second handle on the same URL sees the same object


def test_missing_keys_and_deletes(store: ObjectStore) -> None:
    with pytest.raises(KeyError):
        store.get("images/none.png")
    assert not store.exists("images/none.png")
    store.delete("images/none.png")  # deleting what is not there is not an error
    store.put("a/b.bin", b"x")
    store.put("a/c.bin", b"y")
    store.delete("a/b.bin")
    assert not store.exists("a/b.bin") and store.list("a") == ["a/c.bin"]
    with pytest.raises(KeyError):
        store.get("a/b.bin")
    store.delete("a/b.bin")
    store.delete("a/c.bin")
    assert store.list() == []


BAD_KEYS = ["../escape", "/etc/passwd", "a/../../b", "", "a\\b", ".", "a/", "x\x00y", "a/.tmp-x.part"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_cannot_escape_the_store(store: ObjectStore, key: str) -> None:
    for op in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key)):
        with pytest.raises(ValueError, match="invalid object key"):
            op()
    with pytest.raises(ValueError):
        store.delete(key)


@pytest.mark.parametrize("prefix", ["..", "../other", "/etc", "a/../.."])
def test_listing_cannot_escape_the_store(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError):
        store.list(prefix)


def test_a_misconfigured_store_raises_store_error(tmp_path: Path, s3_endpoint: str) -> None:
    """No bucket, or a root that is a file: StoreError naming the store, never a silent miss."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    no_bucket = FsspecStore("s3://no-such-bucket/p", **s3_options(s3_endpoint))
    for broken in (LocalStore(blocker), no_bucket):
        with pytest.raises(StoreError, match="cannot write"):
            broken.put("x/y.bin", b"1")
    for op in (lambda: no_bucket.get("x"), lambda: no_bucket.exists("x"), no_bucket.list):
        with pytest.raises(StoreError, match="no-such-bucket"):
            op()
    with pytest.raises(StoreError, match="cannot read"):
        LocalStore(blocker).get("x/y.bin")


def test_store_options_come_from_the_environment(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = new_bucket(s3_endpoint)
    options = {"endpoint_url": s3_endpoint, **ACCESS}
    monkeypatch.setenv(STORE_OPTIONS_ENV, json.dumps(options))
    store = open_store(f"s3://{bucket}/itloop")
    assert isinstance(store, FsspecStore)
    store.put("a.txt", b"hello")
    assert boto(s3_endpoint).get_object(Bucket=bucket, Key="itloop/a.txt")["Body"].read() == b"hello"
    monkeypatch.setenv(STORE_OPTIONS_ENV, "[1, 2]")
    with pytest.raises(StoreError, match=STORE_OPTIONS_ENV):
        open_store(f"s3://{bucket}/itloop")
    monkeypatch.delenv(STORE_OPTIONS_ENV)
    assert isinstance(open_store(str(Path("/tmp"))), LocalStore)


# --- a writer killed mid-upload ----------------------------------------------------------

WRITER = """
import sys
from itloop.storage import FsspecStore, open_store
url, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
if url.startswith("s3://"):
    # Endpoint and credentials only from the environment (FSSPEC_S3_ENDPOINT_URL, AWS_*), as deployed.
    store = FsspecStore(url, part_size=5 * 2**20, max_concurrency=1)
else:
    store = open_store(url)
data = bytes(size)
print("writing", flush=True)
store.put(key, data)
print("done", flush=True)
"""


def start_writer(url: str, key: str, size: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, url, key, str(size)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it exited first (the write won the race)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            return True
        time.sleep(0.001)
    proc.kill()
    raise AssertionError(f"writer never reached the point to kill it: {proc.communicate()[0]!r}")


def test_local_writer_killed_mid_write_leaves_no_visible_object(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    key = "models/checkpoint.pt"
    size = 256 * 2**20
    for _ in range(3):
        proc = start_writer(root.as_uri(), key, size)
        if kill_when(proc, lambda: any(root.rglob(".tmp-*"))):
            break
        size *= 2  # the whole write beat the poll: try a bigger object
    else:
        raise AssertionError("could not catch the writer mid-write")
    assert proc.returncode == -signal.SIGKILL
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.get(key)
    assert store.list() == []  # the orphaned temporary file is not an object
    assert len(list(root.rglob(".tmp-*"))) == 1  # ... but it is there: the kill did land mid-write
    assert store.sweep_temp(older_than_s=3600) == 0  # a young temp file may belong to a live writer
    assert store.sweep_temp(older_than_s=0) == 1
    assert not any(root.rglob(".tmp-*"))
    store.put(key, b"retry")  # the next attempt simply writes the object
    assert store.get(key) == b"retry"


def test_s3_writer_killed_mid_multipart_upload_leaves_no_object(s3_endpoint: str) -> None:
    bucket = new_bucket(s3_endpoint)
    client = boto(s3_endpoint)
    key = "models/checkpoint.pt"
    env = {
        "FSSPEC_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS["key"],
        "AWS_SECRET_ACCESS_KEY": ACCESS["secret"],
        STORE_OPTIONS_ENV: "",
    }

    def uploading() -> bool:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return any(
            client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
            for u in uploads
        )

    size = 24 * PART
    for _ in range(3):
        proc = start_writer(f"s3://{bucket}/itloop", key, size, env)
        if kill_when(proc, uploading):
            break
        client.delete_object(Bucket=bucket, Key=f"itloop/{key}")
        size *= 2
    else:
        raise AssertionError("could not catch the writer mid-upload")
    store = FsspecStore(f"s3://{bucket}/itloop", **s3_options(s3_endpoint))
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.get(key)
    assert store.list() == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    # The parts sit in an incomplete upload (invisible, billed): a lifecycle rule expires them.
    uploads = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["Key"] for u in uploads] == [f"itloop/{key}"]
    client.abort_multipart_upload(Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])
