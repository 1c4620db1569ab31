"""Bearer tokens never reach a log record, whoever logs and whatever the request did."""

from __future__ import annotations

import logging

import pytest

from itloop.logging import RedactTokens


def test_no_token_in_any_log_record(client, tokens, caplog: pytest.LogCaptureFixture) -> None:
    """Every record of the root logger at DEBUG, during good, forbidden, failing and bad-token requests."""
    bogus = "itl_BogusTokenValue0123456789abcdef"
    with caplog.at_level(logging.DEBUG):
        for role, token in tokens.items():
            h = {"Authorization": f"Bearer {token}"}
            assert client.get("/api/v1/me", headers=h).status_code == 200
            client.get("/api/v1/users", headers=h)  # 405: no such method
            client.post("/api/v1/users", json={"name": f"x-{role}", "role": "admin"}, headers=h)
            client.get("/api/v1/sessions/no-such-session", headers=h)
            client.get("/api/v1/jobs/99999999999999999999", headers=h)  # out of range: logged by the handler
            client.post("/api/v1/sessions/nope/spikes", content=b"junk", headers=h)
        for header in (f"Bearer {bogus}", bogus, f"Basic {bogus}", f"Bearer {bogus} extra"):
            assert client.get("/api/v1/me", headers={"Authorization": header}).status_code in (401, 403)
        logging.getLogger("itloop.test").warning("a careless line with %s", f"Bearer {tokens['admin']}")
    assert caplog.records, "nothing was logged: the capture is not working"
    secrets = [*tokens.values(), bogus]
    for record in caplog.records:
        # What a handler would write: the filter runs on the root handler, so apply it as one does.
        RedactTokens().filter(record)
        text = record.getMessage() + (record.exc_text or "")
        leaked = [s[:10] for s in secrets if s in text]
        assert not leaked, f"{record.name}: token {leaked} in {text[:200]!r}"


def test_no_token_reaches_a_record_unfiltered(client, tokens, caplog: pytest.LogCaptureFixture) -> None:
    """Stricter: no library or itloop module puts a token in a record in the first place."""
    with caplog.at_level(logging.DEBUG):
        for token in tokens.values():
            client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            client.get("/api/v1/rigs/x/batches/next", headers={"Authorization": f"Bearer {token}"})
    for record in caplog.records:
        text = record.getMessage()
        assert not any(t in text for t in tokens.values()), f"{record.name}: {text[:200]!r}"


@pytest.mark.parametrize(
    "msg, args",
    [
        ("auth header %s", ("Bearer itl_abcdefABCDEF0123456789",)),
        ("token=%s failed", ("itl_abcdefABCDEF0123456789",)),
        ("Authorization: Bearer itl_abcdefABCDEF0123456789 from 10.0.0.1", ()),
        ("headers %r", ({"authorization": "Bearer sometoken-ABCDEF.0123"},)),
    ],
)
def test_redact_filter_scrubs_tokens(msg: str, args: tuple) -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)
    assert RedactTokens().filter(record) is True  # redacts, never drops
    out = record.getMessage()
    assert "abcdefABCDEF0123456789" not in out and "sometoken-ABCDEF.0123" not in out, out
    assert "***" in out


def test_redact_filter_leaves_other_messages_alone() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "ingested %d spikes for %s", (5, "s1"), None)
    RedactTokens().filter(record)
    assert record.getMessage() == "ingested 5 spikes for s1"
