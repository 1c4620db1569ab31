"""The object store: content addressing, atomic writes, safe keys, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from itloop.sha256 import sha256_hex
from itloop.storage import LocalStore, StoreError, image_key, open_store


def test_put_get_roundtrip_and_listing(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    data = b"\x89PNG fake"
    key = image_key(sha256_hex(data))
    store.put(key, data)
    assert store.exists(key) and store.get(key) == data
    assert store.list("images") == [key]
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.get(key)


def test_bare_path_opens_local_store(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "", "a\\b"])
def test_keys_cannot_escape_the_store(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ValueError):
        store.put(key, b"x")


def test_image_key_rejects_non_hashes() -> None:
    with pytest.raises(ValueError):
        image_key("../../etc/passwd")
    assert image_key("ab" * 32).startswith("images/ab/")


def test_failed_write_leaves_no_partial_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    key = "images/aa/" + "a" * 64 + ".png"
    with pytest.raises(TypeError):
        store.put(key, object())  # type: ignore[arg-type]
    assert not store.exists(key)
    assert store.list() == []
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))


def test_store_on_a_file_gives_clear_error(tmp_path: Path) -> None:
    """A store root that is not a directory (misconfiguration) fails with the store's message."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot write"):
        LocalStore(blocker).put("x/y.bin", b"1")
