"""The one factory for platform HTTP clients (clients/http.py), against a real HTTPS
server on loopback (the reference platform's aiohttp server with its own CA)."""

from __future__ import annotations

import ast
import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import hss_pu
from hss_pu.clients.http import Trust, UploadError, platform_http, tls_context, upload
from hss_pu.errors import LinkError
from hss_pu.reference_platform.pki import Pki
from hss_pu.reference_platform.web import HttpServer, Request, Response

MAC = "02:00:00:00:00:07"
SECRET = "Sig-0123456789abcdef"


@dataclass
class Server:
    base: str = ""
    requests: list[Request] = field(default_factory=list)

    async def __call__(self, req: Request) -> Response:
        self.requests.append(req)
        if req.path == "/moved":
            return Response(302, b"", {"location": f"{self.base}/target"})
        if req.path == "/fail":
            return Response(503, f"signature {SECRET} expired\n\x1b[31mred".encode())
        return Response(200, b"ok")


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[Server]:
    s = Server()
    srv = HttpServer(s, pki.server_context())
    port = await srv.start("127.0.0.1", 0)
    s.base = f"https://127.0.0.1:{port}"
    try:
        yield s
    finally:
        await srv.close()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:  # the connection tasks' TLS shutdown
            await asyncio.wait(others, timeout=2)


async def test_mac_identity_on_every_request_and_no_redirects(
    server: Server, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # trust_env is off: a proxy in the service's environment is not used.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    async with platform_http(MAC, str(pki.ca_file), trust=Trust.UPLOADS, timeout=5) as http:
        await upload(http, f"{server.base}/a.jpg", b"\xff\xd8", "image/jpeg")
        r = await http.get(f"{server.base}/b")
        assert r.status_code == 200
        with pytest.raises(UploadError, match=r"HTTP 302.*redirects are not followed") as ei:
            await upload(http, f"{server.base}/moved?token={SECRET}", b"x", "image/jpeg")
    assert ei.value.status == 302 and SECRET not in str(ei.value)
    assert [r.path for r in server.requests] == ["/a.jpg", "/b", "/moved"]  # not /target
    assert all(r.headers["mac-identity"] == MAC for r in server.requests)
    assert server.requests[0].headers["content-type"] == "image/jpeg"
    assert server.requests[0].body == b"\xff\xd8"


async def test_trust_platform_is_the_ca_file_alone_uploads_add_it(server: Server, pki: Pki) -> None:
    for trust in Trust:
        async with platform_http(MAC, str(pki.ca_file), trust=trust, timeout=5) as http:
            await upload(http, f"{server.base}/ok", b"x", "text/plain")
        # Without the CA file, the system store does not know our private CA.
        async with platform_http(MAC, None, trust=trust, timeout=5) as http:
            with pytest.raises(UploadError, match="ConnectError"):
                await upload(http, f"{server.base}/ok", b"x", "text/plain")
    # PLATFORM: the CA file replaces the system store; UPLOADS: it is added to it.
    assert tls_context(str(pki.ca_file), Trust.PLATFORM).cert_store_stats()["x509_ca"] == 1
    system = tls_context(None, Trust.UPLOADS).cert_store_stats()["x509_ca"]
    uploads = tls_context(str(pki.ca_file), Trust.UPLOADS).cert_store_stats()["x509_ca"]
    assert uploads == system + 1
    for trust in Trust:  # verification is never off
        ctx = tls_context(None, trust)
        assert ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"


async def test_upload_failures_are_link_errors_without_secrets(server: Server, pki: Pki) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    async with platform_http(
        MAC, str(pki.ca_file), trust=Trust.UPLOADS, timeout=5, connect_timeout=1
    ) as http:
        with pytest.raises(UploadError) as ei:
            await upload(http, f"{server.base}/fail?X-Sig={SECRET}", b"x", "image/jpeg")
        assert ei.value.status == 503
        text = str(ei.value)
        assert "HTTP 503" in text and "X-Sig=***" in text and SECRET not in text
        assert "\x1b" not in text and "\n" not in text
        for url in (
            f"https://user:{SECRET}@127.0.0.1:{closed}/x",  # refused
            f"https://127.0.0.1:99999/x?t={SECRET}",  # httpx: InvalidURL, not HTTPError
            f"https://{'a' * 64}.example/x?t={SECRET}",  # IDNA's UnicodeError
            "https://[::1/x",
            f"ftp://h.example/x?t={SECRET}",
        ):
            with pytest.raises(LinkError) as li:
                await upload(http, url, b"x", "image/jpeg")
            assert isinstance(li.value, UploadError), url
            assert SECRET not in str(li.value), url


def test_factory_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="MAC"):
        platform_http("", None, trust=Trust.PLATFORM, timeout=5)
    with pytest.raises(ValueError, match="positive"):
        platform_http(MAC, None, trust=Trust.PLATFORM, timeout=0)
    http = platform_http(MAC, None, trust=Trust.UPLOADS, timeout=30, connect_timeout=10)
    assert http.timeout.connect == 10 and http.timeout.read == 30
    assert not http.follow_redirects and not http.trust_env


# httpx is imported by clients/ alone (and the reference platform, a program of its own).
PENDING_HTTPX: set[str] = set()


def test_httpx_stays_inside_clients() -> None:
    root = Path(hss_pu.__file__).parent
    users = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).as_posix()
        if rel.startswith(("hss_pu/clients/", "hss_pu/reference_platform/")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "httpx" or n.startswith("httpx.") for n in names):
                users.add(rel)
    assert users <= PENDING_HTTPX, users - PENDING_HTTPX
