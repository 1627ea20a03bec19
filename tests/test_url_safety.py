"""URL safety (wire-notes): the pure rules (wire/urlsafety.py) and the guarded HTTP
client (clients/http.py) against real HTTP(S) servers on loopback. The daemon's uses
(Snapshot 12, the alarm picture, StartRecord's cbk_url) are in tests/test_alarms.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from hss_pu.clients.http import (
    Trust,
    UploadError,
    UrlGuard,
    UrlNotAllowed,
    platform_http,
    resolve,
    upload,
)
from hss_pu.clients.vr import VrClient, VrError
from hss_pu.reference_platform.pki import Pki
from hss_pu.reference_platform.web import HttpServer, Request, Response
from hss_pu.wire.urlsafety import (
    UrlRefused,
    address_problem,
    check_addresses,
    host_problem,
    is_exempt,
    normalize_host,
    parse_target,
)

MAC = "02:00:00:00:00:08"
PUBLIC = "93.184.216.34"


# --- the pure rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"), ("239.1.2.3", "multicast"), ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 ("::", "unspecified"),
        ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
        ("100.64.0.1", "private"), ("fc00::1", "private"), ("192.0.2.1", "private"),
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:192.168.0.1", "private"),
        ("2002:c0a8:101::1", "private"), ("64:ff9b::7f00:1", "loopback"),
        (PUBLIC, None), ("2606:4700:4700::1111", None), ("8.8.8.8", None),
    ],
)  # fmt: skip
def test_address_classes(address: str, problem: str | None) -> None:
    assert address_problem(address) == problem


def test_scheme_host_and_port_rules() -> None:
    t = parse_target("https://Cam.Example.:8443/x?sig=1", allow_insecure=False)
    assert (t.scheme, t.host, t.port, t.literal) == ("https", "cam.example", 8443, None)
    assert parse_target("https://[::1]/x", allow_insecure=False).host == "::1"
    assert parse_target("http://h.example/x", allow_insecure=True).port == 80
    for url, why in [
        ("http://h.example/x", "plain http"),
        ("ftp://h.example/x", "not an https"),
        ("file:///etc/passwd", "not an https"),
        ("https:///x", "no host"),
        ("https://h.example:0/x", "port 0"),
        ("https://h.example:99999/x", "not a usable URL"),
        ("https://[::1/x", "not a usable URL"),
    ]:
        with pytest.raises(UrlRefused, match=why):
            parse_target(url, allow_insecure=False)


def test_refusals_name_the_url_without_its_secrets() -> None:
    url = "https://router.lan/cgi?token=TOPSECRET"
    t = parse_target(url, allow_insecure=False)
    with pytest.raises(UrlRefused) as ei:
        check_addresses(url, t, [PUBLIC, "192.168.1.1"])  # every address counts
    text = str(ei.value)
    assert "router.lan is private (192.168.1.1)" in text and "TOPSECRET" not in text
    check_addresses(url, t, [PUBLIC])
    with pytest.raises(UrlRefused, match="no address"):
        check_addresses(url, t, [])


def test_exempt_hosts_compare_as_written() -> None:
    assert normalize_host("[::1]") == "::1" and normalize_host("Platform.LAN.") == "platform.lan"
    assert is_exempt("PLATFORM.lan", ["platform.lan"])
    assert is_exempt("0:0::1", ["::1"])  # one IP literal, two spellings
    assert not is_exempt("localhost", ["127.0.0.1"])  # another name is checked
    assert not is_exempt("evil.example", ["", "platform.lan"])
    assert host_problem("nas.local") is None and host_problem("10.0.0.5") is None
    assert host_problem("bad host") is not None and host_problem("-x.example") is not None


# --- the guarded client -----------------------------------------------------------------


@dataclass
class Server:
    requests: list[Request] = field(default_factory=list)

    async def __call__(self, req: Request) -> Response:
        self.requests.append(req)
        return Response(200, b"ok")


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[tuple[Server, int]]:
    """An HTTPS server on 127.0.0.1 whose certificate names 127.0.0.1 and localhost."""
    s = Server()
    srv = HttpServer(s, pki.server_context())
    port = await srv.start("127.0.0.1", 0)
    try:
        yield s, port
    finally:
        await srv.close()


async def test_loopback_only_for_the_platform_host_and_allowed_hosts(
    tls_server: tuple[Server, int], pki: Pki
) -> None:
    server, port = tls_server
    guard = UrlGuard(allow_insecure=False, platform_hosts=lambda: ["127.0.0.1"])
    async with platform_http(
        MAC, str(pki.ca_file), trust=Trust.UPLOADS, timeout=5, guard=guard
    ) as http:
        await upload(http, f"https://127.0.0.1:{port}/a.jpg", b"x", "image/jpeg")
        await guard.check(f"https://127.0.0.1:{port}/a.jpg")
        # localhost is the same server (its certificate names it), but not the host the
        # device reached the platform on: refused, ahead of time and on the wire.
        for url in (f"https://localhost:{port}/b.jpg", f"https://[::ffff:127.0.0.1]:{port}/c"):
            with pytest.raises(UrlNotAllowed, match="loopback"):
                await guard.check(url)
            with pytest.raises(UrlNotAllowed, match="loopback"):
                await upload(http, url, b"x", "image/jpeg")
        with pytest.raises(UrlNotAllowed, match="plain http"):
            await upload(http, f"http://127.0.0.1:{port}/d", b"x", "image/jpeg")
    assert [r.path for r in server.requests] == ["/a.jpg"]
    allowed = UrlGuard(allow_insecure=False, allowed_hosts=["LOCALHOST"])
    async with platform_http(
        MAC, str(pki.ca_file), trust=Trust.UPLOADS, timeout=5, guard=allowed
    ) as http:
        await upload(http, f"https://localhost:{port}/e.jpg", b"x", "image/jpeg")
    assert [r.path for r in server.requests] == ["/a.jpg", "/e.jpg"]


async def test_every_address_of_a_name_is_checked_at_connect_time(
    tls_server: tuple[Server, int], pki: Pki
) -> None:
    """A name with a public and a loopback address is refused; a name that resolves to a
    public address when checked and to loopback when connected (DNS rebinding) is
    refused at the connection, which is opened to checked addresses only."""
    server, port = tls_server
    answers = {"mixed.test": [[PUBLIC, "127.0.0.1"]], "rebind.test": [[PUBLIC], ["127.0.0.1"]]}
    asked: list[str] = []

    async def resolver(host: str, _port: int) -> list[str]:
        asked.append(host)
        seq = answers[host]
        return seq.pop(0) if len(seq) > 1 else seq[0]

    guard = UrlGuard(allow_insecure=False, resolver=resolver)
    async with platform_http(
        MAC, str(pki.ca_file), trust=Trust.UPLOADS, timeout=5, guard=guard
    ) as http:
        with pytest.raises(UrlNotAllowed, match=r"mixed.test is loopback \(127.0.0.1\)"):
            await upload(http, f"https://mixed.test:{port}/x", b"x", "image/jpeg")
        await guard.check(f"https://rebind.test:{port}/x")  # the first answer: public
        with pytest.raises(UrlNotAllowed, match="loopback"):
            await upload(http, f"https://rebind.test:{port}/x", b"x", "image/jpeg")
    assert asked == ["mixed.test", "rebind.test", "rebind.test"]
    assert server.requests == []


async def test_the_connection_goes_to_the_checked_address(pki: Pki) -> None:
    """The system resolver does not know ``only-ours.test``: a request to it arrives
    only because the guard's backend connects to the address the guard approved."""
    server = Server()
    srv = HttpServer(server, None)
    port = await srv.start("127.0.0.1", 0)

    class Approving(UrlGuard):
        async def addresses(self, host: str, port: int, url: str = "") -> list[str] | None:
            if host == "only-ours.test":
                return ["127.0.0.1"]
            return await super().addresses(host, port, url)

    try:
        async with platform_http(
            MAC, None, trust=Trust.UPLOADS, timeout=5, guard=Approving(allow_insecure=True)
        ) as http:
            await upload(http, f"http://only-ours.test:{port}/y", b"x", "text/plain")
    finally:
        await srv.close()
    assert [r.path for r in server.requests] == ["/y"]
    assert server.requests[0].headers["host"] == f"only-ours.test:{port}"


async def test_vr_requests_obey_the_guard(tls_server: tuple[Server, int], pki: Pki) -> None:
    """Segment uploads and cbk_url POSTs go through the same guard: a refusal is a
    VrError that retrying cannot help, and nothing is sent."""
    server, port = tls_server
    guard = UrlGuard(allow_insecure=False, platform_hosts=lambda: ["127.0.0.1"])
    async with platform_http(
        MAC, str(pki.ca_file), trust=Trust.UPLOADS, timeout=5, guard=guard
    ) as http:
        vr = VrClient(f"https://localhost:{port}/live/cseg/0", http, https=True)
        with pytest.raises(VrError, match="loopback") as ei:
            await vr.save("seg-1")
        assert not ei.value.transient
    assert server.requests == []


async def test_unresolvable_names_are_network_errors_not_refusals() -> None:
    guard = UrlGuard(allow_insecure=False)
    with pytest.raises(UploadError) as ei:
        await guard.check("https://no-such-host.invalid/x")
    assert not isinstance(ei.value, UrlNotAllowed)
    assert await resolve("127.0.0.1", 443) == ["127.0.0.1"]
