"""The web console's login (issue 14, item 1), against the reference platform over real
TLS with its own CA, driven by httpx (and ``hss-pu platform serve`` / ``console-password``
as real processes): the session cookie's attributes, 401s without a session, wrong
passwords refused and slowed down, logout, a password changed from the command line,
the password file (0600, a scrypt hash only), the generated password kept out of the
logs, and no plain-HTTP console beyond loopback.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hss_pu.reference_platform.console import auth
from hss_pu.reference_platform.console.auth import Throttle
from hss_pu.reference_platform.server import ReferencePlatform

from .support.rig import MakePlatform
from .test_platform_cli import Serve, hss_pu

LOGIN = "/console/api/login"


def _client(p: ReferencePlatform) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = False
    if p.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(p.ca_file))
    return httpx.AsyncClient(
        base_url=p.schedule_url, verify=verify, trust_env=False, follow_redirects=False
    )


def _password(p: ReferencePlatform) -> str:
    assert p.console is not None
    pw = p.console.take_generated_password()
    assert pw is not None and len(pw) >= 16
    assert p.console.take_generated_password() is None  # handed out once
    return pw


@pytest.fixture
async def console(make_platform: MakePlatform) -> ReferencePlatform:
    return await make_platform(console=True)


@pytest.fixture
async def console_http(console: ReferencePlatform) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(console) as c:
        yield c


async def _login(http: httpx.AsyncClient, password: str, user: str = "admin") -> httpx.Response:
    return await http.post(LOGIN, json={"user": user, "password": password})


def _cookie_attributes(r: httpx.Response) -> tuple[str, dict[str, str]]:
    (header,) = r.headers.get_list("set-cookie")
    first, *rest = (part.strip() for part in header.split(";"))
    name, _, value = first.partition("=")
    assert name == auth.COOKIE
    attrs = {}
    for part in rest:
        key, _, val = part.partition("=")
        attrs[key.lower()] = val
    return value, attrs


async def test_login_sets_a_secure_httponly_strict_session_cookie(
    console: ReferencePlatform, console_http: httpx.AsyncClient
) -> None:
    pw = _password(console)
    r = await _login(console_http, pw)
    assert (r.status_code, r.json()) == (200, {"user": "admin"})
    token, attrs = _cookie_attributes(r)
    assert len(token) >= 32
    assert attrs.keys() >= {"secure", "httponly", "samesite", "path"}
    assert (attrs["samesite"].lower(), attrs["path"]) == ("strict", "/console")
    assert "max-age" not in attrs and "expires" not in attrs  # ends with the browser
    r = await console_http.get("/console/api/session")
    assert (r.status_code, r.json()) == (200, {"user": "admin"})
    # The HTML form: the same check, then to the console.
    async with _client(console) as form:
        r = await form.post(LOGIN, data={"user": "admin", "password": pw})
        assert (r.status_code, r.headers["location"]) == (303, "/console/")
        assert (await form.get("/console/api/session")).status_code == 200
        r = await form.get("/console/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    # The platform's own endpoints are not behind the console's login.
    assert (await console_http.get("/Vs/getServerAddr")).status_code == 400


async def test_the_api_refuses_requests_without_a_session(
    console: ReferencePlatform, console_http: httpx.AsyncClient
) -> None:
    api = ["session", "devices", "nothing-here", "live/PU-0001/0"]
    for path in [*(f"/console/api/{p}" for p in api), "/console/api", "/console/%61pi/session"]:
        r = await console_http.get(path)
        assert (r.status_code, r.json()) == (401, {"info": "log in first"}), path
    r = await console_http.post("/console/api/logout")
    assert r.status_code == 401
    console_http.cookies.set(auth.COOKIE, "not-a-session", path="/console")
    assert (await console_http.get("/console/api/session")).status_code == 401
    console_http.cookies.clear()
    # Open: the login page (a plain form posting to the API) and the login call itself.
    r = await console_http.get("/console/login")
    assert r.status_code == 200 and 'action="/console/api/login"' in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    # The console page sends a browser without a session to the login page.
    r = await console_http.get("/console/")
    assert (r.status_code, r.headers["location"]) == (303, "/console/login")


async def test_a_page_without_a_session_goes_to_the_login_form_and_back_to_it(
    console: ReferencePlatform, console_http: httpx.AsyncClient
) -> None:
    """One login page, a plain form (no script): a page asked for without a session is
    sent there with ``?next=``, and the form goes back to that page of the console."""
    pw = _password(console)
    page = "/console/device?id=PU-0001&x=%3Cb%3E"
    r = await console_http.get(page)
    assert r.status_code == 303
    login = httpx.URL(r.headers["location"])
    assert (login.path, login.params["next"]) == ("/console/login", page)
    r = await console_http.get(login)
    assert r.status_code == 200 and "<script" not in r.text
    field = '<input type="hidden" name="next" value="/console/device?id=PU-0001&amp;x=%3Cb%3E">'
    assert field in r.text
    # A wrong password: the form again, still going back to the page.
    r = await console_http.post(LOGIN, data={"user": "admin", "password": "nope", "next": page})
    assert r.status_code == 401 and "Wrong user or password" in r.text and field in r.text
    await asyncio.sleep(auth.FAIL_DELAY)
    r = await console_http.post(LOGIN, data={"user": "admin", "password": pw, "next": page})
    assert (r.status_code, r.headers["location"]) == (303, page)
    assert (await console_http.get(page)).status_code == 200
    # What needs no session is not sent to the login page.
    console_http.cookies.clear()
    for path in ("/console/login", "/console/static/common.js", "/console/vendor/hls.js"):
        assert (await console_http.get(path)).status_code == 200, path


async def test_the_login_goes_back_only_to_a_path_of_the_console(
    console: ReferencePlatform,
) -> None:
    """``next`` is never an address elsewhere (an open redirect), nor a path out of the
    console; anything else logs in to the device list."""
    pw = _password(console)
    cases = {
        "/console/alarms": "/console/alarms",
        "/console/recordings?device=PU-0001&channel=0&at=1700000000": (
            "/console/recordings?device=PU-0001&channel=0&at=1700000000"
        ),
        '/console/alarms?q="><script>alert(1)</script>': (
            '/console/alarms?q="><script>alert(1)</script>'
        ),
        "": "/console/",
        "https://evil.example/console/": "/console/",
        "//evil.example/console/": "/console/",
        "/\\evil.example/console/": "/console/",
        "/console/../Vs/getServerAddr": "/console/",
        "/console/%2e%2E/admin": "/console/",
        "/console/.%2e/admin": "/console/",
        "/console/%2F%2Fevil.example": "/console/",
        "/console\\..\\x": "/console/",
        "/Vs/getServerAddr": "/console/",
        "/console/login?next=/console/alarms": "/console/",
        "/console/api/logout": "/console/",
        "javascript:alert(1)//": "/console/",
        "/console/\r\nSet-Cookie: a=b": "/console/",
        "/console/" + "a" * 3000: "/console/",
    }
    async with _client(console) as form:
        for target, landing in cases.items():
            r = await form.post(LOGIN, data={"user": "admin", "password": pw, "next": target})
            assert (r.status_code, r.headers["location"]) == (303, landing), target
            r = await form.get("/console/login", params={"next": target})
            assert f'name="next" value="{html.escape(landing)}"' in r.text, target
            assert "<script" not in r.text


async def test_wrong_passwords_are_refused_and_each_next_one_waits_longer(
    console: ReferencePlatform, console_http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    pw = _password(console)
    tries = [("root", pw), ("admin", f"{pw}-X1"), ("admin", f"{pw}-X2")]
    took = []
    for user, password in tries:  # the right password for another user is wrong too
        t0 = time.monotonic()
        r = await _login(console_http, password, user=user)
        took.append(time.monotonic() - t0)
        assert (r.status_code, r.json()) == (401, {"info": "wrong user or password"})
        assert "set-cookie" not in r.headers
    # The first answered at once (a scrypt check), the next after 0.5 s, then 1 s.
    assert took[1] >= auth.FAIL_DELAY and took[2] >= 2 * auth.FAIL_DELAY
    assert took[2] > took[1]
    logged = [r.getMessage() for r in caplog.records if "failed console login" in r.getMessage()]
    assert len(logged) == 3 and all(pw not in line for line in logged)
    assert "root" not in logged[0]  # a typed user name may be a password: not logged


async def test_logout_ends_the_session(
    console: ReferencePlatform, console_http: httpx.AsyncClient
) -> None:
    r = await _login(console_http, _password(console))
    token, _ = _cookie_attributes(r)
    r = await console_http.post("/console/api/logout")
    assert (r.status_code, r.json()) == (200, {})
    value, attrs = _cookie_attributes(r)
    assert value in ("", '""') and attrs.get("max-age") == "0"
    assert (await console_http.get("/console/api/session")).status_code == 401
    console_http.cookies.set(auth.COOKIE, token, path="/console")  # the old cookie, kept
    assert (await console_http.get("/console/api/session")).status_code == 401


async def test_sessions_expire_when_idle(
    console: ReferencePlatform, console_http: httpx.AsyncClient
) -> None:
    assert console.console is not None
    await _login(console_http, _password(console))
    assert (await console_http.get("/console/api/session")).status_code == 200
    later = time.monotonic() + auth.SESSION_IDLE + 1
    console.console.auth.clock = lambda: later
    assert (await console_http.get("/console/api/session")).status_code == 401


async def _set_password(state_dir: Path, text: bytes) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hss_pu", "platform", "console-password",
        "--state-dir", str(state_dir),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, _ = await proc.communicate(text)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_console_password_from_the_command_line(
    console: ReferencePlatform, console_http: httpx.AsyncClient
) -> None:
    old = _password(console)
    assert (await _login(console_http, old)).status_code == 200
    state_dir = console.options.state_dir
    before = (state_dir / auth.PASSWORD_FILE).read_bytes()
    for bad in (b"\n", b"short\n", b""):
        rc, out = await _set_password(state_dir, bad)
        assert rc == 2 and "at least" in out, out
    assert (state_dir / auth.PASSWORD_FILE).read_bytes() == before
    new = "correct horse battery staple"
    rc, out = await _set_password(state_dir, f"{new}\n".encode())
    assert rc == 0, out
    assert new not in out
    # The running platform takes it at once; the old password's sessions end.
    assert (await console_http.get("/console/api/session")).status_code == 401
    async with _client(console) as fresh:
        assert (await _login(fresh, old)).status_code == 401
        await asyncio.sleep(auth.FAIL_DELAY)  # the wrong try above slows the next one
        assert (await _login(fresh, new)).status_code == 200


async def test_the_password_file_is_0600_and_holds_only_a_scrypt_hash(
    console: ReferencePlatform,
) -> None:
    pw = _password(console)
    path = console.options.state_dir / auth.PASSWORD_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    text = path.read_text()
    assert pw not in text
    record = json.loads(text)
    assert record["user"] == "admin"
    h = record["scrypt"]
    assert (h["n"], h["r"], h["p"]) == (auth.SCRYPT_N, auth.SCRYPT_R, auth.SCRYPT_P)
    assert h["n"] >= 2**14 and len(base64.b64decode(h["salt"])) == 16
    assert len(base64.b64decode(h["hash"])) == 32
    # A second start keeps the password (none generated, none to print).
    await console.close()
    assert auth.load_record(path) == record


async def test_the_generated_password_never_reaches_the_logs(
    make_platform: MakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    p = await make_platform(console=True)
    pw = _password(p)
    async with _client(p) as http:
        assert (await _login(http, pw[:-1])).status_code == 401
        assert (await _login(http, pw)).status_code == 200
        assert (await http.post("/console/api/logout")).status_code == 200
    await p.close()
    assert caplog.records, "nothing logged at all: the check would be empty"
    assert "console: admin logged in from 127.0.0.1" in caplog.text
    for text in (caplog.text, *(str(r.args) for r in caplog.records)):
        assert pw not in text and pw[:-1] not in text
    for f in p.options.state_dir.rglob("*"):
        if f.is_file():
            assert pw.encode() not in f.read_bytes(), f


async def test_a_plain_http_console_only_on_loopback(make_platform: MakePlatform) -> None:
    with pytest.raises(ValueError, match="HTTPS"):
        await make_platform(console=True, tls=False, host="0.0.0.0")  # noqa: S104
    p = await make_platform(console=True, tls=False)  # loopback: allowed, cookie not Secure
    async with _client(p) as http:
        r = await _login(http, _password(p))
        assert r.status_code == 200
        _, attrs = _cookie_attributes(r)
        assert "secure" not in attrs and attrs["samesite"].lower() == "strict"


async def test_serve_prints_the_console_url_and_the_password_once(tmp_path: Path) -> None:
    state_dir = tmp_path / "platform"
    everywhere = "0.0.0.0"  # noqa: S104 (refused before anything listens)
    cli = ("--plain", "--host", everywhere, "--state-dir", str(state_dir))
    rc, out, err = await hss_pu("platform", "serve", *cli)
    assert rc == 1 and "console" in err and "HTTPS" in err, (out, err)
    serve = await Serve.start(state_dir)
    try:
        url = next(line.split()[-1] for line in serve.banner if "console:" in line)
        assert url.startswith("https://127.0.0.1:") and url.endswith("/console/")
        (line,) = [line for line in serve.banner if "console password:" in line]
        pw = line.split("console password:")[1].split()[0]
        ca = ssl.create_default_context(cafile=serve.state["ca_file"])
        async with httpx.AsyncClient(verify=ca, trust_env=False) as http:
            r = await http.post(url + "api/login", json={"user": "admin", "password": pw})
            assert r.status_code == 200
    finally:
        assert await serve.stop() == 0
    assert not any(pw in line for line in serve.lines)  # the log (stderr)
    again = await Serve.start(state_dir)
    try:
        assert any("console:" in line for line in again.banner)
        assert not any("password" in line and pw in line for line in again.banner)
        assert not any("console password:" in line for line in again.banner)
    finally:
        assert await again.stop() == 0


def test_throttle_per_peer_and_global() -> None:
    now = [1000.0]
    t = Throttle(clock=lambda: now[0])
    assert t.wait("a") == 0
    t.failed("a")
    assert t.wait("a") == auth.FAIL_DELAY and t.wait("b") == 0
    t.failed("a")
    assert t.wait("a") == 2 * auth.FAIL_DELAY
    now[0] += 0.25
    assert t.wait("a") == pytest.approx(2 * auth.FAIL_DELAY - 0.25)
    for _ in range(20):
        t.failed("a")
    assert t.wait("a") == auth.MAX_DELAY
    t.succeeded("a")
    assert t.wait("a") == 0
    # Many peers, each failing once: the global brake slows everybody (a little).
    for i in range(auth.GLOBAL_FREE + 3):
        t.failed(f"p{i}")
    assert 0 < t.wait("fresh") <= auth.GLOBAL_MAX_DELAY
    now[0] += auth.FORGET_AFTER + 1
    assert t.wait("fresh") == 0 and t.wait("p0") == 0
