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


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_retry_delay_refuses_a_scale_that_would_spin(scale: float) -> None:
    with pytest.raises(ValueError, match="spin"):
        retry_delay(3, scale)


# --- issue 9: the Vs reply validated where it enters ------------------------------


def _reply(**fields: object) -> bytes:
    body: dict[str, object] = {"PassDomain": "vd.example.net", "Secure_PassPort": 8443}
    body.update(fields)
    return json.dumps(body).encode()


def test_string_fields_are_trimmed() -> None:
    # Table I.1's own example carries a trailing space.
    addr = parse_server_addr(
        _reply(PassDomain="www.test01.com ", P2p_passDomain=" www.test02.com ",
               TurnDomain="www.test03.com ", HibernationDomain=" www.test04.com:7000 ")
    )  # fmt: skip
    assert addr.pass_domain == "www.test01.com"
    assert (addr.p2p_domain, addr.turn_domain) == ("www.test02.com", "www.test03.com")
    assert addr.hibernation_domain == "www.test04.com:7000"
    assert vd_base_url(addr, allow_insecure=False) == "wss://www.test01.com:8443/Vd"


@pytest.mark.parametrize(
    "domain",
    ["a" * 64 + ".example.net", "a" * 64, ("a" * 62 + ".") * 4 + "abc", "bad_host.example",
     "-lead.example", "trail-.example", "two..dots", ".", "   ", "vd.example.net/x",
     "vd.example.net:443", "1.2.3.999", "[vd.example.net]", "::g", "caf\u00e9.example",
     "a b", "h\x00", "wss://vd.example.net"],
)  # fmt: skip
def test_pass_domain_that_is_no_host_name_is_a_failed_attempt(domain: str) -> None:
    with pytest.raises(VsFormatError, match="PassDomain"):
        parse_server_addr(_reply(PassDomain=domain))


@pytest.mark.parametrize(
    "domain",
    ["vd.example.net", "vd.example.net.", "xn--caf-dma.example", "localhost", "a" * 63,
     "127.0.0.1", "::1", "2001:db8::7", "VD-1.Example.NET", ("a" * 62 + ".") * 4 + "a"],
)  # fmt: skip
def test_pass_domain_host_names_and_ip_literals(domain: str) -> None:
    addr = parse_server_addr(_reply(PassDomain=domain))
    assert addr.pass_domain == domain
    vd_base_url(addr, allow_insecure=False).encode("ascii")  # an ASCII URL, no IDNA


def test_bracketed_ipv6_literal_is_accepted() -> None:
    addr = parse_server_addr(_reply(PassDomain="[2001:db8::7]"))
    assert addr.pass_domain == "2001:db8::7"
    assert vd_base_url(addr, allow_insecure=False) == "wss://[2001:db8::7]:8443/Vd"


@pytest.mark.parametrize(
    "fields", [{"Secure_PassPort": 99999}, {"PassPort": -1}, {"Secure_PassPort": 8443.5},
               {"Secure_PassPort": True}, {"P2p_passPort": 70000}],
)  # fmt: skip
def test_port_out_of_range_is_a_failed_attempt(fields: dict[str, object]) -> None:
    with pytest.raises(VsFormatError):
        parse_server_addr(_reply(**fields))


@pytest.mark.parametrize(
    "fields",
    [{"SyncTime": 1e300}, {"SyncTime": -5}, {"Timestamp": 1e400}, {"Timestamp": "soon"},
     {"SyncTime": 1262304000000}, {"Timestamp": 4102444800}, {"timestamp": [1]},
     {"SyncTime": None}],
)  # fmt: skip
def test_time_outside_2020_2100_is_ignored_with_a_note(fields: dict[str, object]) -> None:
    body = _reply(**fields).replace(b"Infinity", b"1e400")
    addr = parse_server_addr(body)
    assert addr.platform_time is None
    assert addr.pass_domain == "vd.example.net"  # the rest of the reply is used
    if next(iter(fields.values())) is not None:
        assert any("ignored" in n for n in addr.ignored), addr.ignored


def test_first_usable_time_wins() -> None:
    addr = parse_server_addr(_reply(SyncTime=1e300, Timestamp=1764000000))
    assert addr.platform_time == pytest.approx(1764000000)
    assert any("SyncTime" in n for n in addr.ignored)


def test_bad_optional_domains_are_ignored_not_fatal() -> None:
    addr = parse_server_addr(_reply(P2p_passDomain="a" * 64, TurnDomain="x y", P2p_passPort=9))
    assert addr.p2p_domain == "" and addr.turn_domain == ""
    assert {n.split(":")[0] for n in addr.ignored} == {"P2p_passDomain", "TurnDomain"}
    assert addr.p2p_port == 9
