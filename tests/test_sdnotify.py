"""sd_notify against real AF_UNIX datagram sockets, the way systemd listens."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hss_pu.sdnotify import SdNotifier

# sockaddr_un.sun_path is 108 bytes; pytest's tmp_path can be longer.
_SUN_PATH_MAX = 100


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def _drain(sock: socket.socket) -> list[bytes]:
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return got


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sdn") as short:
        yield Path(short) / "notify.sock"


@pytest.fixture
def listener(socket_path: Path) -> Iterator[socket.socket]:
    sock = _receiver(str(socket_path))
    yield sock
    sock.close()


@pytest.fixture
def notifier(socket_path: Path, listener: socket.socket) -> Iterator[SdNotifier]:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": str(socket_path)})
    yield n
    n.close()


def test_ready_status_stopping_watchdog_byte_exact(
    notifier: SdNotifier, listener: socket.socket
) -> None:
    assert notifier.enabled
    notifier.ready()
    assert listener.recv(4096) == b"READY=1"
    notifier.ready("streaming to platform")
    assert listener.recv(4096) == b"READY=1\nSTATUS=streaming to platform"
    notifier.status("camera: 1920x1080 @ 25 fps, µs ok")
    assert listener.recv(4096) == "STATUS=camera: 1920x1080 @ 25 fps, µs ok".encode()
    notifier.ping()
    assert listener.recv(4096) == b"WATCHDOG=1"
    notifier.stopping()
    assert listener.recv(4096) == b"STOPPING=1"
    notifier.stopping("shutting down")
    assert listener.recv(4096) == b"STOPPING=1\nSTATUS=shutting down"


def test_notify_keeps_field_order_and_reports_success(
    notifier: SdNotifier, listener: socket.socket
) -> None:
    assert notifier.notify(STATUS="x", EXTEND_TIMEOUT_USEC="5000000", READY="1")
    assert listener.recv(4096) == b"STATUS=x\nEXTEND_TIMEOUT_USEC=5000000\nREADY=1"


def test_abstract_socket() -> None:
    name = f"hss-pu-test-{uuid.uuid4().hex}"
    sock = _receiver(b"\0" + name.encode())
    try:
        with SdNotifier.from_env({"NOTIFY_SOCKET": "@" + name}) as n:
            n.ready("up")
            assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    finally:
        sock.close()


def test_socket_is_close_on_exec(notifier: SdNotifier, listener: socket.socket) -> None:
    notifier.ping()
    listener.recv(4096)
    sock = notifier._sock
    assert sock is not None
    assert not os.get_inheritable(sock.fileno())


def test_newline_rejected(notifier: SdNotifier, listener: socket.socket) -> None:
    with pytest.raises(ValueError):
        notifier.status("two\nlines")
    with pytest.raises(ValueError):
        notifier.notify(**{"BAD\nKEY": "1"})
    with pytest.raises(ValueError):
        notifier.notify(**{"A=B": "1"})
    assert _drain(listener) == []


def test_noop_without_notify_socket() -> None:
    n = SdNotifier.from_env({"WATCHDOG_USEC": "100000"})
    assert not n.enabled
    assert n.notify(READY="1") is False
    n.ready("x")
    n.status("x")
    n.stopping()
    n.ping()
    assert n.watchdog_interval() is None
    # Still a caller bug when disabled, so laptops and tests catch it too.
    with pytest.raises(ValueError):
        n.status("a\nb")
    n.close()


def test_from_env_defaults_to_process_environment(
    monkeypatch: pytest.MonkeyPatch, socket_path: Path, listener: socket.socket
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(socket_path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    with SdNotifier.from_env() as n:
        assert n.enabled
        n.ready()
        assert listener.recv(4096) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not SdNotifier.from_env().enabled


def test_unsupported_address_disables() -> None:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert n.notify(READY="1") is False


def test_watchdog_interval(socket_path: Path, listener: socket.socket) -> None:
    base = {"NOTIFY_SOCKET": str(socket_path)}
    assert SdNotifier.from_env(base).watchdog_interval() is None
    n = SdNotifier.from_env({**base, "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval() == pytest.approx(15.0)
    pid = str(os.getpid())
    n = SdNotifier.from_env({**base, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid})
    assert n.watchdog_interval() == pytest.approx(15.0)
    for bad in ("0", "-5", "soon"):
        assert SdNotifier.from_env({**base, "WATCHDOG_USEC": bad}).watchdog_interval() is None
    # No socket to ping: no watchdog either.
    assert SdNotifier.from_env({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None


async def test_watchdog_pid_mismatch_means_no_watchdog(
    socket_path: Path, listener: socket.socket
) -> None:
    env = {
        "NOTIFY_SOCKET": str(socket_path),
        "WATCHDOG_USEC": "100000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }
    with SdNotifier.from_env(env) as n:
        assert n.enabled
        assert n.watchdog_interval() is None
        # Returns at once instead of pinging for someone else's watchdog.
        await asyncio.wait_for(n.watchdog_loop(), timeout=1.0)
    assert _drain(listener) == []


async def test_watchdog_loop_pings_until_cancelled(
    socket_path: Path, listener: socket.socket
) -> None:
    env = {"NOTIFY_SOCKET": str(socket_path), "WATCHDOG_USEC": "100000"}
    with SdNotifier.from_env(env) as n:
        assert n.watchdog_interval() == pytest.approx(0.05)
        task = asyncio.create_task(n.watchdog_loop())
        await asyncio.sleep(0.32)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pings = _drain(listener)
        assert len(pings) >= 4
        assert set(pings) == {b"WATCHDOG=1"}
        await asyncio.sleep(0.15)
        assert _drain(listener) == []


async def test_watchdog_loop_returns_without_watchdog(
    socket_path: Path, listener: socket.socket
) -> None:
    with SdNotifier.from_env({"NOTIFY_SOCKET": str(socket_path)}) as n:
        await asyncio.wait_for(n.watchdog_loop(), timeout=1.0)
    await asyncio.wait_for(SdNotifier.from_env({}).watchdog_loop(), timeout=1.0)
    assert _drain(listener) == []


def test_removed_socket_does_not_raise_and_logs_once(
    socket_path: Path, listener: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": str(socket_path)})
    assert n.notify(READY="1")
    listener.close()
    socket_path.unlink()
    caplog.set_level(logging.DEBUG, logger="hss_pu.sdnotify")
    assert n.notify(WATCHDOG="1") is False
    n.ping()
    n.status("still here")
    records = [r for r in caplog.records if r.name == "hss_pu.sdnotify"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG

    # systemd comes back (daemon-reexec): sending works again, and a later
    # outage is logged again.
    back = _receiver(str(socket_path))
    try:
        assert n.notify(WATCHDOG="1")
        assert back.recv(4096) == b"WATCHDOG=1"
    finally:
        back.close()
    socket_path.unlink()
    n.ping()
    assert len([r for r in caplog.records if r.name == "hss_pu.sdnotify"]) == 2
    n.close()


def test_never_bound_socket_does_not_raise(tmp_path: Path) -> None:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert n.enabled
    assert n.notify(READY="1") is False
    n.close()


def test_close_disables(notifier: SdNotifier, listener: socket.socket) -> None:
    notifier.close()
    assert not notifier.enabled
    assert notifier.notify(READY="1") is False
    notifier.close()
    assert _drain(listener) == []
