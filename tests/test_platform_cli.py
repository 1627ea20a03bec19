"""``hss-pu platform serve`` as a real process, driven by ``platform call`` and a fake device."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from hss_pu.cli import main
from hss_pu.wire.hibernation import encode_heartbeat, parse_address

from .test_platform_vd import KEEPALIVE, Device

SECRET = "SuperSecret99"
WRONG = "WrongGuess4242"


class Serve:
    """``hss-pu platform serve`` in a subprocess, its stdout banner and stderr log lines."""

    def __init__(self, proc: asyncio.subprocess.Process, state_dir: Path) -> None:
        self.proc = proc
        self.state_dir = state_dir
        self.banner: list[str] = []
        self.lines: list[str] = []

    @classmethod
    async def start(cls, state_dir: Path, *args: str) -> Serve:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hss_pu",
            "platform",
            "serve",
            "--state-dir",
            str(state_dir),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        s = cls(proc, state_dir)
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            while not s.banner or not s.banner[-1].startswith("try:"):
                raw = await proc.stdout.readline()
                assert raw, f"serve exited early: {await s._stderr()}"
                s.banner.append(raw.decode().rstrip("\n"))
        return s

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()

    @property
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.state_dir / "platform.json").read_text())
        return state

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        async with asyncio.timeout(10):
            err = await self._stderr()
            rc = await self.proc.wait()
        self.lines = err.splitlines()
        return rc


async def hss_pu(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hss_pu",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def answer(req: dict[str, Any]) -> dict[str, Any] | None:
    if req["req"] == "GetCap":
        return {"resp": {"ptz": True, "battery": False}}
    if req["req"] == "Settime":
        return {"resp": {"got": req.get("params")}}
    return {"err": {"code": 101, "msg": f"unsupported method {req['req']!r}"}}


async def test_serve_call_event_and_secrets(tmp_path: Path) -> None:
    state_dir = tmp_path / "platform"
    serve = await Serve.start(
        state_dir, "--device", f"PU-9:{SECRET}", "--hb-interval", "5", "--log-level", "debug"
    )
    try:
        state = serve.state
        assert os.stat(state_dir / "platform.json").st_mode & 0o077 == 0
        assert any(state["schedule_url"] in line for line in serve.banner)
        assert any(str(state["ca_file"]) in line for line in serve.banner)
        assert serve.banner[-1] == f"try: hss-pu platform call PU-9 GetCap --state-dir {state_dir}"
        base = f"wss://127.0.0.1:{state['vd_port']}/Vd"
        ca = Path(state["ca_file"])

        for _ in range(2):
            with pytest.raises(Exception, match="401"):
                await Device.login(base, "PU-9", WRONG, ca=ca)
        dev = await Device.login(base, "PU-9", SECRET, ca=ca)
        dev.answer = answer
        info = await dev.rpc("GetServerInfo", {"mac_id": "02:00:00:00:00:09", "state": 1})
        resp = info["resp"]  # serve runs a hibernation server: its address, our token
        assert resp["hb_interval"] == 5 and len(resp["hb_token"]) == 16
        assert resp["hibernation"].startswith("127.0.0.1:")
        await dev.rpc("Keepalive", KEEPALIVE)

        cli = ("--state-dir", str(state_dir))
        rc, out, err = await hss_pu("platform", "call", "PU-9", "GetCap", *cli)
        assert (rc, json.loads(out)) == (0, {"resp": {"ptz": True, "battery": False}}), err
        params = '{"datetime": "2024-01-02T03:04:05", "offset": 2}'
        rc, out, err = await hss_pu("platform", "call", "PU-9", "Settime", params, *cli)
        assert rc == 0 and json.loads(out)["resp"]["got"]["offset"] == 2
        rc, out, err = await hss_pu("platform", "call", "PU-9", "Nope", *cli)
        assert rc == 1 and json.loads(out)["err"]["code"] == 101
        assert err.strip() == (
            "hss-pu platform: PU-9 answered Nope with error 101: unsupported method 'Nope'"
        )

        rc, out, _ = await hss_pu("platform", "event", "PU-9", "CtrlPTZ", '{"op": "up"}', *cli)
        assert rc == 0
        assert await dev.next() == {"event": "CtrlPTZ", "params": {"op": "up"}}
        rc, out, _ = await hss_pu("platform", "ptz", "PU-9", "left_step", "80", *cli)
        assert rc == 0
        want = {"channel": 0, "op": "left_step", "value": 80}
        assert await dev.next() == {"event": "CtrlPTZ", "params": want}
        rc, out, _ = await hss_pu("platform", "devices", *cli)
        (pu9,) = json.loads(out)["devices"]
        assert pu9["online"] and pu9["last_keepalive"] == KEEPALIVE
        rc, out, _ = await hss_pu("platform", "records", "PU-9", *cli)
        assert [r["name"] for r in json.loads(out)["records"]] == ["GetServerInfo", "Keepalive"]

        await dev.close()
        rc, out, err = await hss_pu("platform", "call", "PU-9", "GetCap", *cli)
        assert (rc, out, err) == (1, "", "hss-pu platform: device PU-9 is not online\n")
        rc, _, err = await hss_pu("platform", "call", "PU-9", "GetCap", "[1, 2]", *cli)
        assert rc == 2 and "PARAMS_JSON must be a JSON object" in err
    finally:
        rc = await serve.stop()
    assert rc == 0, serve.lines
    text = "\n".join(serve.lines + serve.banner)
    assert "PU-9 online from 127.0.0.1:" in text
    assert "login of PU-9 from 127.0.0.1:" in text and "wrong password (2/5)" in text
    assert "<- PU-9 Keepalive #2" in text
    for secret in (SECRET, WRONG, state["token"]):
        assert secret not in text
    assert "***" not in text  # nothing needed redacting: the lines never held a secret
    assert serve.lines[-1].endswith("stopped")
    assert not (state_dir / "platform.json").exists()


async def test_sleeping_and_wake_through_the_cli(tmp_path: Path) -> None:
    """A device that heartbeats is listed by ``platform sleeping``; ``platform wake``
    sends it TOWAKEUP; ``--no-hibernation`` leaves the address out of GetServerInfo."""
    state_dir = tmp_path / "platform"
    serve = await Serve.start(state_dir, "--device", f"PU-9:{SECRET}", "--plain")
    cli = ("--state-dir", str(state_dir))
    try:
        base = f"ws://127.0.0.1:{serve.state['vd_port']}/Vd"
        dev = await Device.login(base, "PU-9", SECRET)
        info = await dev.rpc("GetServerInfo", {"mac_id": "02:00:00:00:00:09", "state": 1})
        address = parse_address(info["resp"]["hibernation"])
        assert isinstance(address, tuple), address
        host, port = address
        await dev.close()
        r, w = await asyncio.open_connection(host, port)
        w.write(encode_heartbeat("PU-9", info["resp"]["hb_token"]))
        await w.drain()
        rc, out, _ = await hss_pu("platform", "sleeping", *cli)
        for _ in range(20):  # the frame may still be on its way
            if rc != 0 or json.loads(out)["sleeping"]:
                break
            await asyncio.sleep(0.1)
            rc, out, _ = await hss_pu("platform", "sleeping", *cli)
        assert rc == 0 and [d["id"] for d in json.loads(out)["sleeping"]] == ["PU-9"]
        rc, out, _ = await hss_pu("platform", "devices", *cli)
        assert json.loads(out)["devices"][0]["sleeping"] is True
        rc, out, err = await hss_pu("platform", "wake", "PU-9", "--wait", "0", *cli)
        assert rc == 0, err
        assert await asyncio.wait_for(r.readexactly(8), 5) == b"TOWAKEUP"
        w.close()
        rc, out, err = await hss_pu("platform", "wake", "PU-7", "--wait", "0", *cli)
        assert rc == 1 and "not sleeping" in err
    finally:
        assert await serve.stop() == 0
    assert info["resp"]["hb_token"] not in "\n".join(serve.lines + serve.banner)
    serve = await Serve.start(
        state_dir, "--device", f"PU-9:{SECRET}", "--plain", "--no-hibernation"
    )
    try:
        dev = await Device.login(f"ws://127.0.0.1:{serve.state['vd_port']}/Vd", "PU-9", SECRET)
        info = await dev.rpc("GetServerInfo", {"mac_id": "02:00:00:00:00:09", "state": 1})
        assert info["resp"] == {}
        await dev.close()
    finally:
        assert await serve.stop() == 0


async def test_serve_stops_on_sigint_plain(tmp_path: Path) -> None:
    serve = await Serve.start(tmp_path / "p", "--plain", "--admin-port", "0")
    assert serve.state["ca_file"] is None
    assert serve.state["schedule_url"].startswith("http://127.0.0.1:")
    assert await serve.stop(signal.SIGINT) == 0
    assert any("SIGINT received: stopping" in line for line in serve.lines)


def test_call_without_platform(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["platform", "call", "PU-1", "GetCap", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is `hss-pu platform serve` running with this --state-dir?" in err
    (tmp_path / "platform.json").write_text(
        json.dumps({"admin_url": "http://127.0.0.1:9", "token": "t"})
    )
    assert main(["platform", "devices", "--state-dir", str(tmp_path)]) == 1
    assert "cannot reach the admin API at http://127.0.0.1:9" in capsys.readouterr().err


def test_bad_device_option_does_not_echo_password(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["platform", "serve", "--device", "PU-1" + SECRET])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "expected ID:PASSWORD" in err and SECRET not in err
