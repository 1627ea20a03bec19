"""The console's login: one user (``admin``), a password stored as a scrypt hash, sessions
in an HttpOnly cookie, and a brake on repeated wrong passwords.

The console can reach every camera of the platform (live view, recordings, reboot), so it
is not open to whoever reaches the port:

- The password is generated at first start (:func:`secrets.token_urlsafe`) and shown once
  on the terminal by whoever starts the platform (``hss-pu platform serve``, ``make run``),
  never through logging; ``hss-pu platform console-password`` sets another.
- ``<state_dir>/console.json`` (0600) holds scrypt's salt and hash only: hashlib's scrypt
  (N=2**15, r=8, p=1: 32 MiB and about 0.1 s per check on a laptop core), a memory-hard
  hash from the standard library, so no new dependency for what argon2 would add little.
  A running platform notices a new file and ends the sessions of the old password.
- A session is a random token in a ``Secure; HttpOnly; SameSite=Strict; Path=/console``
  cookie (Secure on HTTPS; plain HTTP is allowed on loopback only), kept server-side
  (its SHA-256) and ended after :data:`SESSION_IDLE` unused or :data:`SESSION_MAX` in all.
- Wrong passwords slow the next try down: per peer (0.5 s, 1 s, 2 s, ... up to 30 s) and,
  past :data:`GLOBAL_FREE` recent failures from anywhere, for everybody (up to 10 s);
  tries from one peer are taken one at a time. Failures are logged without the password
  (and without the user name unless it is ``admin``: people type passwords there too).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from hss_pu.fsutil import atomic_write

__all__ = [
    "COOKIE",
    "FAIL_DELAY",
    "MIN_PASSWORD",
    "PASSWORD_FILE",
    "USER",
    "ConsoleAuth",
    "PasswordFileError",
    "Session",
    "Throttle",
    "current_session",
    "hash_password",
    "load_record",
    "login_url",
    "safe_next",
    "store_password",
    "verify_password",
]

log = logging.getLogger("hss_pu.platform.console")

USER = "admin"
PASSWORD_FILE = "console.json"  # noqa: S105 (a file name)
MIN_PASSWORD = 10  # characters, for one set by hand (the generated one has 32)
MAX_PASSWORD = 1024  # longer ones are refused before hashing
COOKIE = "hss_console"
COOKIE_PATH = "/console"

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024  # 128 * N * r = 32 MiB, plus hashlib's margin
SALT_BYTES, HASH_BYTES = 16, 32
HASHING_AT_ONCE = 2  # concurrent scrypt checks (32 MiB each)

SESSION_IDLE = 12 * 3600.0  # s unused before a session ends
SESSION_MAX = 7 * 24 * 3600.0  # s after login, used or not
MAX_SESSIONS = 64  # the oldest ends beyond this

FAIL_DELAY = 0.5  # s: the wait after one failure; doubled by each next one
MAX_DELAY = 30.0
GLOBAL_FREE = 10  # recent failures from anywhere before everybody waits too
GLOBAL_DELAY = 0.25  # s after GLOBAL_FREE + 1 failures, doubled by each next one
GLOBAL_MAX_DELAY = 10.0
FORGET_AFTER = 15 * 60.0  # s without a failure: the count starts again
MAX_PEERS = 1024  # peers remembered (the oldest forgotten)
MAX_WAITING = 4  # tries of one peer queued; more are answered 429 at once


class PasswordFileError(Exception):
    """console.json is missing a field, or is not what this module writes."""


# --- the password file ------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=HASH_BYTES
    )


def hash_password(password: str) -> dict[str, Any]:
    """The record console.json holds (CPU-bound: call off the event loop)."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return {
        "user": USER,
        "scrypt": {"n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt),
                   "hash": _b64(key)},
        "changed": round(time.time()),
    }  # fmt: skip


def verify_password(password: str, record: dict[str, Any]) -> bool:
    """Constant-time check against a record of :func:`hash_password` (CPU-bound)."""
    if len(password) > MAX_PASSWORD:
        return False
    h = record["scrypt"]
    key = _scrypt(password, base64.b64decode(h["salt"]), h["n"], h["r"], h["p"])
    return hmac.compare_digest(key, base64.b64decode(h["hash"]))


def _check_record(record: Any, path: Path) -> dict[str, Any]:
    try:
        h = record["scrypt"]
        ok = (
            record["user"] == USER
            and all(isinstance(h[k], int) and not isinstance(h[k], bool) for k in "nrp")
            and 2**10 <= h["n"] <= 2**20
            and h["n"] & (h["n"] - 1) == 0
            and 1 <= h["r"] <= 32
            and 1 <= h["p"] <= 16
            and 128 * h["n"] * h["r"] * h["p"] < SCRYPT_MAXMEM
            and len(base64.b64decode(h["salt"], validate=True)) >= 8
            and len(base64.b64decode(h["hash"], validate=True)) == HASH_BYTES
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise PasswordFileError(
            f"{path}: not a console password file (set a new password with "
            "hss-pu platform console-password)"
        )
    return dict(record)


def load_record(path: Path) -> dict[str, Any] | None:
    """console.json's record; None when there is none. PasswordFileError: unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswordFileError(f"{path}: unreadable: {exc}") from None
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise PasswordFileError(f"{path}: not JSON: {exc}") from None
    return _check_record(record, path)


def store_password(state_dir: Path, password: str) -> None:
    """Hash ``password`` into ``<state_dir>/console.json`` (0600, atomically). Blocking:
    call off the event loop. ValueError: too short or too long."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"the password must have at most {MAX_PASSWORD} characters")
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = hash_password(password)
    atomic_write(state_dir / PASSWORD_FILE, json.dumps(record, indent=2).encode() + b"\n", 0o600)


# --- the brake on wrong passwords -------------------------------------------------------


@dataclass
class _Strikes:
    count: int = 0
    last: float = 0.0  # clock time of the last failure
    waiting: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _delay(count: int, base: float, cap: float) -> float:
    return 0.0 if count <= 0 else min(cap, base * 2.0 ** min(count - 1, 30))


class Throttle:
    """Failures per peer and overall; :meth:`wait` says how long the next try waits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._peers: OrderedDict[str, _Strikes] = OrderedDict()
        self._global = _Strikes()

    def _fresh(self, s: _Strikes) -> _Strikes:
        if s.count and self._clock() - s.last > FORGET_AFTER:
            s.count = 0
        return s

    def strikes(self, peer: str) -> _Strikes:
        s = self._peers.get(peer)
        if s is None:
            s = self._peers[peer] = _Strikes()
            for old, o in list(self._peers.items()):
                if len(self._peers) <= MAX_PEERS:
                    break
                if not o.lock.locked() and old != peer:
                    del self._peers[old]
        self._peers.move_to_end(peer)
        return self._fresh(s)

    def wait(self, peer: str) -> float:
        now = self._clock()
        s = self.strikes(peer)
        g = self._fresh(self._global)
        mine = s.last + _delay(s.count, FAIL_DELAY, MAX_DELAY) - now if s.count else 0.0
        over = g.count - GLOBAL_FREE
        everybody = g.last + _delay(over, GLOBAL_DELAY, GLOBAL_MAX_DELAY) - now if over > 0 else 0
        return max(0.0, mine, everybody)

    def failed(self, peer: str) -> int:
        """Count a failure; returns the peer's failures in a row."""
        now = self._clock()
        s = self.strikes(peer)
        g = self._fresh(self._global)
        s.count, s.last = s.count + 1, now
        g.count, g.last = g.count + 1, now
        return s.count

    def succeeded(self, peer: str) -> None:
        """The right password: the owner is here, so both brakes are released."""
        self.strikes(peer).count = 0
        self._global.count = 0


# --- sessions and the web side ----------------------------------------------------------


@dataclass
class Session:
    user: str
    peer: str
    created: float
    used: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# A request's Session (web.RequestKey from aiohttp 3.13; a str key before it).
_SESSION: Any = (
    web.RequestKey("hss_console_session", Session)
    if hasattr(web, "RequestKey")
    else "hss_console_session"
)


def current_session(request: web.Request) -> Session:
    """The session of a request under /console/api/ (the middleware has checked it)."""
    s = request.get(_SESSION)
    if not isinstance(s, Session):
        raise web.HTTPUnauthorized(text='{"info": "log in first"}', content_type="application/json")
    return s


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths under /console/api/ that need no session.
OPEN_API = frozenset({"/console/api/login"})
API_PREFIX = "/console/api"


def _info(status: int, text: str) -> web.Response:
    return web.json_response({"info": text}, status=status)


class ConsoleAuth:
    """The password, the sessions and the throttle of one platform's console."""

    def __init__(self, state_dir: Path, *, secure: bool) -> None:
        self.path = state_dir / PASSWORD_FILE
        self.state_dir = state_dir
        self.secure = secure
        self.throttle = Throttle()
        self._record: dict[str, Any] | None = None
        self._stat: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)
        self._generated: str | None = None
        self.clock = time.monotonic  # of the sessions' ages (tests move it)

    # -- the password --

    async def load(self) -> None:
        """Read console.json, or create it with a generated password (kept for
        :meth:`take_generated_password`). PasswordFileError: an unusable file."""
        record = await asyncio.to_thread(load_record, self.path)
        if record is None:
            password = secrets.token_urlsafe(24)
            await asyncio.to_thread(store_password, self.state_dir, password)
            record = await asyncio.to_thread(load_record, self.path)
            self._generated = password
            log.info("console: a password was generated for %s (stored hashed in %s)",
                     USER, self.path)  # fmt: skip
        self._record = record
        self._stat = self._file_stat()
        self._checked = time.monotonic()

    def take_generated_password(self) -> str | None:
        """The password generated by this start, once (to print on the terminal)."""
        pw, self._generated = self._generated, None
        return pw

    def _file_stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _refresh(self, force: bool = False) -> None:
        """Take a password set by ``hss-pu platform console-password`` meanwhile (looked
        at every second at most): the old one's sessions end."""
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        stat = self._file_stat()
        if stat == self._stat or stat is None:
            return
        try:
            record = await asyncio.to_thread(load_record, self.path)
        except PasswordFileError as exc:
            log.warning("console: keeping the password in use: %s", exc)
            self._stat = stat
            return
        self._stat = stat
        if record is not None and record != self._record:
            self._record = record
            if self._sessions:
                log.info("console: the password changed: %d session(s) ended",
                         len(self._sessions))  # fmt: skip
            self._sessions.clear()

    # -- sessions --

    def _new_session(self, peer: str) -> str:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        self._sessions[_digest(token)] = Session(USER, peer, now, now)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return token

    def session(self, request: web.Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        if not token or len(token) > 128:
            return None
        key = _digest(token)
        s = self._sessions.get(key)
        if s is None:
            return None
        now = self.clock()
        if now - s.used > SESSION_IDLE or now - s.created > SESSION_MAX:
            del self._sessions[key]
            return None
        s.used = now
        return s

    def _set_cookie(self, resp: web.StreamResponse, token: str, *, clear: bool = False) -> None:
        resp.set_cookie(
            COOKIE,
            "" if clear else token,
            path=COOKIE_PATH,
            httponly=True,
            secure=self.secure,
            samesite="Strict",
            max_age=0 if clear else None,
        )

    # -- handlers --

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if (path == API_PREFIX or path.startswith(API_PREFIX + "/")) and path not in OPEN_API:
            await self._refresh()
            session = self.session(request)
            if session is None:
                return _info(401, "log in first")
            request[_SESSION] = session
        return await handler(request)

    async def _check(self, peer: str, user: str, password: str) -> bool:
        s = self.throttle.strikes(peer)
        if s.waiting >= MAX_WAITING:
            raise web.HTTPTooManyRequests(
                text=json.dumps({"info": "too many login attempts at once"}),
                content_type="application/json",
            )
        s.waiting += 1
        try:
            async with s.lock:  # one try of a peer at a time, each after its wait
                wait = self.throttle.wait(peer)
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._refresh(force=True)
                record = self._record
                assert record is not None
                async with self._hashing:
                    ok = await asyncio.to_thread(verify_password, password, record)
                ok = hmac.compare_digest(user.encode(), USER.encode()) and ok
                if ok:
                    self.throttle.succeeded(peer)
                    return True
                count = self.throttle.failed(peer)
        finally:
            s.waiting -= 1
        log.warning(
            "failed console login for %s from %s (%d in a row; the next waits %.1f s)",
            USER if user == USER else "another user name", peer, count,
            self.throttle.wait(peer),
        )  # fmt: skip
        return False

    async def login(self, request: web.Request) -> web.StreamResponse:
        """``POST /console/api/login``: JSON ``{"user", "password"}`` -> ``{"user"}``, or
        the login form's fields -> 303 to its ``next`` (:func:`safe_next`); 401 when
        wrong."""
        is_form = request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        )
        if request.content_length is not None and request.content_length > 16 * 1024:
            return _info(413, "login body too large")
        try:
            if is_form:
                data: Any = dict(await request.post())
            else:
                data = await request.json()
        except (ValueError, web.HTTPException):
            return _info(400, "expected JSON {user, password} or the login form")
        if not isinstance(data, dict):
            return _info(400, "expected JSON {user, password} or the login form")
        user, password = data.get("user", USER), data.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not password:
            return _info(400, "user and password must be non-empty strings")
        peer = request.remote or "?"
        target = safe_next(data.get("next"))
        if not await self._check(peer, user, password):
            if is_form:
                page = login_page("Wrong user or password.", target)
                return web.Response(status=401, text=page, content_type="text/html",
                                    headers=PAGE_HEADERS)  # fmt: skip
            return _info(401, "wrong user or password")
        token = self._new_session(peer)
        log.info("console: %s logged in from %s", USER, peer)
        resp: web.StreamResponse
        if is_form:
            resp = web.Response(status=303, headers={"Location": target})
        else:
            resp = web.json_response({"user": USER})
        self._set_cookie(resp, token)
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """``POST /console/api/logout``: the session ends, the cookie is cleared."""
        token = request.cookies.get(COOKIE, "")
        self._sessions.pop(_digest(token), None)
        log.info("console: %s logged out", USER)
        resp = web.json_response({})
        self._set_cookie(resp, "", clear=True)
        return resp

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        """``GET /console/api/session``: who is logged in (the page asks at load)."""
        return web.json_response({"user": current_session(request).user})

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        """``GET /console/login?next=PATH``: the form, going back to PATH once logged in."""
        page = login_page(next_path=safe_next(request.query.get("next")))
        return web.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)


PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


INDEX = "/console/"
MAX_NEXT = 2048


def safe_next(value: object) -> str:
    """Where the login goes back to: ``value`` when it is a path of this console, else
    the console's index. Never an address elsewhere (``//host``, ``https://``: an open
    redirect), nor a path that a browser would take out of ``/console/`` (dot segments,
    also percent-encoded; encoded slashes and backslashes are refused outright), nor
    the login form itself or the API."""
    if not isinstance(value, str) or not value.startswith(INDEX) or len(value) > MAX_NEXT:
        return INDEX
    if not value.isprintable() or "\\" in value:
        return INDEX
    low = value.lower()
    if "%2f" in low or "%5c" in low:
        return INDEX
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return INDEX
    if parts.path == "/console/login" or parts.path.startswith(API_PREFIX + "/"):
        return INDEX  # a page to go back to, not the form again nor an API answer
    if any(seg in (".", "..") for seg in unquote(parts.path).split("/")):
        return INDEX
    return value


def login_url(next_path: str) -> str:
    """The login form that goes back to ``next_path`` (a console path) afterwards."""
    if next_path == INDEX:
        return "/console/login"
    return "/console/login?next=" + quote(next_path, safe="")


def login_page(error: str = "", next_path: str = INDEX) -> str:
    """A plain HTML form (no script): it works in any browser, the console's or not.
    ``next_path`` (checked by :func:`safe_next`) goes with it, for after the login."""
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    target = html.escape(safe_next(next_path))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hss-pu console: log in</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f4f5f7; margin: 0; }}
form {{ max-width: 20rem; margin: 15vh auto; background: #fff; padding: 1.5rem 2rem;
       border-radius: 8px; box-shadow: 0 1px 4px #0002; }}
h1 {{ font-size: 1.2rem; margin-top: 0; }}
label {{ display: block; margin: .8rem 0 .2rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .4rem; font-size: 1rem; }}
button {{ margin-top: 1.2rem; width: 100%; padding: .5rem; font-size: 1rem; }}
.error {{ color: #b00020; }}
.hint {{ color: #666; font-size: .85rem; margin-bottom: 0; }}
</style>
</head>
<body>
<form method="post" action="/console/api/login">
<h1>hss-pu console</h1>
{message}
<input type="hidden" name="next" value="{target}">
<label for="user">User</label>
<input id="user" name="user" value="{USER}" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password"
       required autofocus>
<button type="submit">Log in</button>
<p class="hint">The password was printed once when the platform first started;
<code>hss-pu platform console-password</code> sets another.</p>
</form>
</body>
</html>
"""
