"""The configuration document (GetConfig/SetConfig/ResetConfig): merge rules and the store."""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hss_pu.config import ConfigDoc, DeviceSection, PlatformSection, StorageSection, make_config
from hss_pu.errors import DeviceFailure, InvalidParam, UnsupportedConfig
from hss_pu.profiles import load_profile, profile_names
from hss_pu.services.devconfig import MAX_STORED_BYTES, DevConfigStore
from hss_pu.wire import devconfig as wire

BASE = wire.Base(width=1280, height=720, fps=30, bitrate=2_000_000)


def nested(depth: int) -> Any:
    """A JSON value ``depth`` containers deep, built the way the Vd decoder builds it."""
    return msgspec.json.decode(b"[" * depth + b"]" * depth)


def doc_for(profile: str = "emulated") -> dict[str, Any]:
    return wire.default_document(load_profile(profile), BASE)


def merge(doc: dict[str, Any], patch: Any, profile: str = "emulated") -> dict[str, Any]:
    return wire.merge(doc, patch, load_profile(profile), BASE)


# --- extension: bounded in depth and size, no recursion ---------------------------------


@pytest.mark.parametrize("where", ["top", "channel"])
def test_deep_extension_refused_and_the_document_stays_usable(where: str) -> None:
    doc = doc_for()

    def patch(ext: Any) -> dict[str, Any]:
        if where == "top":
            return {"extension": ext}
        return {"channels": {"0": {"extension": ext}}}

    for depth in (700, wire.MAX_EXTENSION_DEPTH + 1):
        with pytest.raises(InvalidParam, match="deeper than"):
            merge(doc, patch({"x": nested(depth)}))
    # The limit counts the extension object itself: {"x": [[...]]} is 1 + depth levels.
    ok = merge(doc, patch({"x": nested(wire.MAX_EXTENSION_DEPTH - 1)}))
    # ... and the document keeps working for every later change (today: error 1 forever).
    again = merge(ok, {"tz": 3})
    assert again["tz"] == 3
    assert merge(again, {"log_level": 4})["log_level"] == 4


def test_extension_size_still_bounded() -> None:
    with pytest.raises(InvalidParam, match="larger than"):
        merge(doc_for(), {"extension": {"k": "x" * (wire.MAX_EXTENSION_BYTES + 1)}})
    # Wide but shallow: refused on size without walking all of it.
    with pytest.raises(InvalidParam, match="larger than"):
        merge(doc_for(), {"extension": {"k": [0] * 100_000}})


def test_merge_copies_only_what_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_deepcopy(*_: Any, **__: Any) -> Any:
        raise AssertionError("merge must not deep-copy a platform-supplied document")

    monkeypatch.setattr(copy, "deepcopy", no_deepcopy)
    ext = {"vendor": {"a": [1, 2, {"b": None}]}}
    cur = merge(doc_for("emulated-dual"), {"extension": ext})
    snapshot = msgspec.json.encode(cur)
    new = merge(cur, {"channels": {"1": {"osd": {"text": "Back door"}}}}, "emulated-dual")
    assert new["channels"]["1"]["osd"]["text"] == "Back door"
    # The old document is untouched; what the patch did not touch is shared, not copied.
    assert msgspec.json.encode(cur) == snapshot
    assert new["extension"] is cur["extension"]
    assert new["channels"]["0"] is cur["channels"]["0"]
    assert new["channels"]["1"]["extension"] is cur["channels"]["1"]["extension"]
    # All or nothing: a bad field after a good one leaves the current document as it was.
    with pytest.raises(InvalidParam):
        merge(cur, {"tz": 5, "channels": {"0": {"osd": {"text": "x"}, "on": "yes"}}})
    assert msgspec.json.encode(cur) == snapshot


# --- alarms: exactly the detectors each channel runs; led: 13 until something applies it --


@pytest.mark.parametrize("name", profile_names())
def test_alarms_list_the_channels_detectors_and_led_is_13_until_applied(name: str) -> None:
    profile = load_profile(name)
    doc = doc_for(name)
    has_led = any(led.role == "status" for led in load_profile(name).doc.leds)
    assert doc["led"] is has_led  # a device without a status LED does not report one lit
    if has_led:  # services/leds.py applies it
        assert merge(doc, {"led": False}, name)["led"] is False
        doc = merge(doc, {"led": False}, name)
    else:
        with pytest.raises(UnsupportedConfig):
            merge(doc, {"led": True}, name)
    for key, ch in doc["channels"].items():
        runs = profile.alarm_kinds(int(key))
        assert list(ch["alarms"]) == runs
        for kind in wire.ALARM_KINDS:
            patch = {"channels": {key: {"alarms": {kind: {"on": True, "sensitivity": 10}}}}}
            if kind in runs:
                assert merge(doc, patch, name)["channels"][key]["alarms"][kind]["on"] is True
            else:
                with pytest.raises(UnsupportedConfig):
                    merge(doc, patch, name)
        with pytest.raises(InvalidParam, match="unknown alarm kind"):
            merge(doc, {"channels": {key: {"alarms": {"nose": {"on": True}}}}}, name)
    # What is already true may be sent back (a platform echoing GetConfig).
    assert merge(doc, {"led": False, "channels": {"0": {"alarms": {}}}}, name) == doc


def test_alarm_entries_defaults_and_bounds() -> None:
    ch = doc_for()["channels"]["0"]["alarms"]
    assert ch["pir"] == {"on": True, "sensitivity": 50, "hold": 10}  # wired: on
    assert ch["bell"] == {"on": True, "sensitivity": 50}  # a pulse: no hold
    assert ch["motion"] == {"on": False, "sensitivity": 50, "hold": 10, "regions": []}
    doc = merge(doc_for(), {"channels": {"0": {"alarms": {"motion": {"regions": [[0, 0, 1, 1]]}}}}})
    assert doc["channels"]["0"]["alarms"]["motion"]["regions"] == [[0.0, 0.0, 1.0, 1.0]]
    bads: list[dict[str, Any]] = [
        {"pir": {"hold": wire.MAX_HOLD + 1}}, {"pir": {"hold": 1.5}}, {"pir": {"on": 1}},
        {"lock": {"hold": 1}}, {"pir": {"regions": []}}, {"motion": {"regions": {}}},
        {"motion": {"regions": [[0, 0, 0, 1]]}}, {"motion": {"regions": [[0, 0, 1]]}},
        {"motion": {"regions": [[-0.1, 0, 0.5, 0.5]]}}, {"motion": {"regions": [["0", 0, 1, 1]]}},
        {"motion": {"regions": [[0, 0, 0.5, 0.5]] * (wire.MAX_REGIONS + 1)}},
    ]  # fmt: skip
    for bad in bads:
        with pytest.raises(InvalidParam):
            merge(doc, {"channels": {"0": {"alarms": bad}}})


def test_stored_alarms_and_led_of_an_older_version_do_not_lose_the_rest() -> None:
    """A document saved with kinds (or an LED) this device no longer runs keeps its other
    settings, the alarms it still runs included."""
    old = doc_for()
    old["tz"] = 2
    old["led"] = True
    old["channels"]["0"]["osd"]["text"] = "Porch"
    old["channels"]["0"]["alarms"] = {"face": {"on": True}, "pir": {"on": False}}
    doc = wire.validate_stored(old, load_profile("emulated"), BASE)
    assert doc["tz"] == 2 and doc["channels"]["0"]["osd"]["text"] == "Porch"
    assert doc["led"] is True  # the emulated status LED is driven: the setting is kept
    assert "face" not in doc["channels"]["0"]["alarms"]
    assert doc["channels"]["0"]["alarms"]["pir"] == {"on": False, "sensitivity": 50, "hold": 10}


# --- auto_reboot ----------------------------------------------------------------------------


def test_auto_reboot_accepted_and_checked() -> None:
    doc = merge(doc_for(), {"auto_reboot": {"on": True, "time": "04:15"}})
    assert doc["auto_reboot"] == {"on": True, "time": "04:15"}
    for bad in ("4:15", "24:00", "04:60", 415, "04:15:00"):
        with pytest.raises(InvalidParam):
            merge(doc, {"auto_reboot": {"time": bad}})
    with pytest.raises(InvalidParam):
        merge(doc, {"auto_reboot": {"on": 1}})


# --- the store: what it reads back from disk is bounded ----------------------------------


def _store(tmp_path: Path) -> DevConfigStore:
    doc = ConfigDoc(
        device=DeviceSection(id="PU-1", password="pw-123456", mac="02:00:00:00:00:01"),
        platform=PlatformSection(schedule_url="https://127.0.0.1:1"),
        storage=StorageSection(dir=str(tmp_path)),
    )
    return DevConfigStore(make_config(doc))


async def test_store_refuses_a_deep_document_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "devconfig.json"
    doc = doc_for()
    doc["tz"] = 4
    raw = msgspec.json.encode(doc)
    deep = b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    path.write_bytes(raw[:-1] + b',"extension":' + deep + b"}")
    store = _store(tmp_path)
    assert store.get()["tz"] == 0  # factory settings
    assert (tmp_path / "devconfig.json.bad").exists()
    assert (await store.set({"tz": 1}))["tz"] == 1  # and SetConfig works


def test_store_reads_a_bounded_amount(tmp_path: Path) -> None:
    path = tmp_path / "devconfig.json"
    path.write_bytes(b"{" + b" " * (MAX_STORED_BYTES + 10) + b"}")
    store = _store(tmp_path)
    assert store.get() == doc_for()  # factory settings
    assert (tmp_path / "devconfig.json.bad").exists()


def test_store_does_not_hang_on_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "devconfig.json")
    result: list[DevConfigStore] = []
    t = threading.Thread(target=lambda: result.append(_store(tmp_path)), daemon=True)
    t.start()
    t.join(5)
    assert result, "DevConfigStore blocked opening a FIFO"
    assert result[0].get()["tz"] == 0


async def test_store_writes_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SetConfig's write and fsync never block the event loop (a slow SD card would stall
    the Vd session and every capture hand-off)."""
    from hss_pu.fsutil import atomic_write as real

    threads: list[str] = []

    def spy(path: Path, data: bytes) -> None:
        threads.append(threading.current_thread().name)
        real(path, data)

    monkeypatch.setattr("hss_pu.services.devconfig.atomic_write", spy)
    store = _store(tmp_path)
    assert (await store.set({"tz": 2}))["tz"] == 2
    assert threads and threading.main_thread().name not in threads
    assert msgspec.json.decode((tmp_path / "devconfig.json").read_bytes())["tz"] == 2


async def test_a_failed_save_changes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (tmp_path / "devconfig.json").mkdir()  # the rename onto it fails
    with pytest.raises(DeviceFailure):
        await store.set({"tz": 5})
    assert store.get()["tz"] == 0
