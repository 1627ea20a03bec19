from __future__ import annotations

import json
from pathlib import Path

import pytest

from hss_pu.retry import MAX_FAILURES_BEFORE_RESCHEDULE, retry_delay
from hss_pu.wire.vs import (
    ServerAddr,
    VsFormatError,
    encode_server_addr,
    parse_server_addr,
    server_addr_path,
    vd_base_url,
)

FIXTURES = Path(__file__).parent / "fixtures" / "vs"


def test_golden_reply_parses() -> None:
    addr = parse_server_addr((FIXTURES / "getServerAddr.json").read_bytes())
    assert addr.pass_domain == "vd.example.net"
    assert addr.secure_pass_port == 8443
    assert addr.platform_time == pytest.approx(1764000000.123)
    assert vd_base_url(addr, allow_insecure=False) == "wss://vd.example.net:8443/Vd"


def test_round_trip() -> None:
    addr = ServerAddr(pass_domain="::1", pass_port=0, secure_pass_port=9, platform_time=1.7e9)
    again = parse_server_addr(encode_server_addr(addr))
    assert again == addr
    assert vd_base_url(again, allow_insecure=False) == "wss://[::1]:9/Vd"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("SyncTime", 1764000000123, 1764000000.123), ("Timestamp", 1764000000, 1764000000.0),
     ("timestamp", 1764000000, 1764000000.0), ("Timestamp", 1764000000500, 1764000000.5)],
)  # fmt: skip
def test_time_field_variants(field: str, value: int, expected: float) -> None:
    body = json.dumps({"PassDomain": "h", "Secure_PassPort": 1, field: value, "Extra": [1]})
    assert parse_server_addr(body.encode()).platform_time == pytest.approx(expected)


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"PassDomain": ""}', b'{"PassDomain": "h"}', b'{"PassDomain": 5}',
     b'{"PassDomain": "h", "Secure_PassPort": 70000}', b"\xff"],
)  # fmt: skip
def test_bad_replies(body: bytes) -> None:
    with pytest.raises(VsFormatError):
        parse_server_addr(body)


def test_insecure_vd_only_when_allowed() -> None:
    addr = ServerAddr(pass_domain="h", pass_port=80, secure_pass_port=0)
    with pytest.raises(VsFormatError, match="allow_insecure"):
        vd_base_url(addr, allow_insecure=False)
    assert vd_base_url(addr, allow_insecure=True) == "ws://h:80/Vd"


def test_query_is_escaped() -> None:
    assert (
        server_addr_path("02:00:00:00:00:01")
        == "/Vs/getServerAddr?macid=02%3A00%3A00%3A00%3A00%3A01"
    )


def test_retry_schedule_bounds() -> None:
    import random

    rng = random.Random(1)
    for n in range(1, 13):
        delays = [retry_delay(n, rng=rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= 5 * n
        assert max(delays) > 5 * n * 0.8  # actually spread over the window
    assert retry_delay(13) == 60.0 and retry_delay(100, scale=0.5) == 30.0
    assert retry_delay(0) == 0.0
    assert MAX_FAILURES_BEFORE_RESCHEDULE == 15
