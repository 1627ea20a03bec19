"""Vd wire layer against golden frames (tests/fixtures/vd), error mapping, and fuzzing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hss_pu.wire import vd
from hss_pu.wire.vd import (
    MESSAGES,
    Code,
    Event,
    Malformed,
    Reply,
    Request,
    RpcError,
    decode_params,
    decode_result,
    encode_error,
    encode_event,
    encode_reply,
    encode_request,
    login_url,
    parse_frame,
    to_builtins,
)

FIXTURES = Path(__file__).parent / "fixtures" / "vd"

PU_TO_PLATFORM = {"Keepalive", "GetServerInfo", "Bind", "AlarmNotify", "BatteryChange", "LogDone"}
EVENTS = {
    "Bind", "BatteryChange", "LogDone", "RebootChannel", "RebootDevice", "Reschedule",
    "UpgradeFirmware", "CtrlPTZ", "PlayVideo", "CtrlVideo",
}  # fmt: skip
RPCS = {
    "Keepalive", "GetServerInfo", "AlarmNotify", "QueryUpgrade", "Settime", "QueryTime",
    "DevStatus", "PushLive", "StopLive", "StartRecord", "StopRecord", "GetPTZPresetList",
    "GetConfig", "SetConfig", "ResetConfig", "Snapshot", "QueryVideoStatus", "KeepAwaken",
    "GetCap", "LogUploadAsync", "GetDiskInfo", "FormatDisk",
}  # fmt: skip
ALL = sorted(EVENTS | RPCS)


def load(name: str) -> dict[str, Any]:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    assert isinstance(doc, dict)
    return doc


def wire(frame: dict[str, Any]) -> str:
    """A fixture frame as the text of one WebSocket frame."""
    return json.dumps(frame, separators=(",", ":"))


def valid_params(name: str) -> dict[str, Any]:
    fixture = load(name)
    frame = fixture.get("request") or fixture["event"]
    params = frame["params"]
    assert isinstance(params, dict)
    return params


# --- the registry -----------------------------------------------------------------


def test_registry_has_exactly_the_32_messages() -> None:
    assert len(ALL) == 32
    assert set(MESSAGES) == set(ALL)
    for name, spec in MESSAGES.items():
        assert spec.name == name
        assert spec.kind == ("event" if name in EVENTS else "rpc"), name
        want = "pu->platform" if name in PU_TO_PLATFORM else "platform->pu"
        assert spec.direction == want, name
        if spec.kind == "event":
            assert spec.result is None, name  # events are never answered


def test_error_codes_of_wire_notes() -> None:
    assert {c.name: int(c) for c in Code} == {
        "INTERNAL": 1, "STREAM_TOO_LARGE": 11, "PARAM": 12, "UNSUPPORTED_CONFIG": 13,
        "UNSUPPORTED_METHOD": 101, "NO_CHANNEL": 102, "CHANNEL_OFFLINE": 103, "INPUT": 400,
    }  # fmt: skip


def test_a_fixture_for_every_message_and_no_other() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(MESSAGES)


# --- golden frames ----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_golden_frames(name: str) -> None:
    fixture = load(name)
    spec = MESSAGES[name]
    if spec.kind == "event":
        assert set(fixture) == {"event"}
        frame = fixture["event"]
        got = parse_frame(wire(frame))
        assert isinstance(got, Event)
        assert got.event == name
        assert "seq" not in frame  # events are never answered
        decoded = decode_params(name, got.params)
        again = encode_event(name, None if decoded is None else to_builtins(decoded))
        assert json.loads(again) == frame
        assert list(json.loads(again)) == list(frame)
    else:
        assert set(fixture) == {"request", "reply"}
        frame, reply = fixture["request"], fixture["reply"]
        got = parse_frame(wire(frame))
        assert isinstance(got, Request)
        assert (got.req, got.seq) == (name, frame["seq"])
        decoded = decode_params(name, got.params)
        again = encode_request(name, got.seq, None if decoded is None else to_builtins(decoded))
        assert json.loads(again) == frame
        assert list(json.loads(again)) == list(frame)  # req, params, seq
        assert list(frame) == (["req", "params", "seq"] if "params" in frame else ["req", "seq"])

        answer = parse_frame(wire(reply))
        assert isinstance(answer, Reply)
        assert answer.seq == got.seq and answer.err is None
        result = decode_result(name, answer.resp)
        assert json.loads(encode_reply(answer.seq, result)) == reply
        assert list(reply) == ["seq", "resp"]

    if spec.params is None:
        assert decoded is None
        assert "params" not in frame
    elif spec.params is dict:
        assert decoded == frame["params"]
    else:
        assert isinstance(decoded, spec.params)


@pytest.mark.parametrize("name", sorted(n for n in RPCS if MESSAGES[n].result is None))
def test_replies_of_none_are_empty_objects(name: str) -> None:
    assert load(name)["reply"]["resp"] == {}
    assert encode_reply(7) == '{"seq":7,"resp":{}}'


def test_pushlive_url_is_the_srt_one_of_wire_notes() -> None:
    params = decode_params("PushLive", valid_params("PushLive"))
    assert params.url == "srt://mdu.example.net:9000?streamid=live/PU-0001/0&latency=200"


def test_params_left_out_when_empty() -> None:
    assert encode_request("GetCap", 3) == '{"req":"GetCap","seq":3}'
    assert encode_request("GetCap", 3, {}) == '{"req":"GetCap","seq":3}'
    assert encode_event("Reschedule") == '{"event":"Reschedule"}'


def _error_fixtures() -> list[Path]:
    return sorted((FIXTURES / "errors").glob("*.json"))


def test_error_fixtures_cover_the_codes() -> None:
    codes = {json.loads(p.read_text())["reply"]["err"]["code"] for p in _error_fixtures()}
    assert codes == {11, 12, 13, 101, 102, 400}


@pytest.mark.parametrize("path", _error_fixtures(), ids=lambda p: p.stem)
def test_error_fixtures(path: Path) -> None:
    fixture = json.loads(path.read_text())
    reply = fixture["reply"]
    err = reply["err"]
    got = parse_frame(wire(reply))
    assert isinstance(got, Reply)
    assert got.resp is None and got.err is not None
    assert (got.seq, got.err.code, got.err.msg) == (reply["seq"], err["code"], err["msg"])
    assert json.loads(encode_error(got.seq, err["code"], err["msg"])) == reply
    assert list(reply) == ["seq", "err"] and list(err) == ["code", "msg"]

    request = parse_frame(wire(fixture["request"]))
    if err["code"] == Code.INPUT:
        # Malformed but with an int seq: the 400 is owed, with the reason as its text.
        assert request == Malformed(err["msg"], reply["seq"])
        return
    assert isinstance(request, Request) and request.seq == reply["seq"]
    if err["code"] in (Code.PARAM, Code.UNSUPPORTED_METHOD):
        # Errors of the wire layer itself: the exact code and text.
        with pytest.raises(RpcError) as info:
            decode_params(request.req, request.params)
        assert (info.value.code, info.value.msg) == (err["code"], err["msg"])
    else:
        # 11, 13, 102 come from the services: the params themselves are well formed.
        decode_params(request.req, request.params)


# --- error mapping ----------------------------------------------------------------


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    ("name", "field"),
    [("PushLive", "url"), ("PushLive", "channel"), ("PushLive", "stream_id"),
     ("PushLive", "max_bitrate"), ("StartRecord", "cbk_url"), ("StartRecord", "start_ts"),
     ("Settime", "datetime"), ("Settime", "offset"), ("Snapshot", "url"),
     ("LogUploadAsync", "trans_id"), ("CtrlPTZ", "op"), ("KeepAwaken", "expired")],
)  # fmt: skip
def test_missing_field_is_12_naming_it(name: str, field: str) -> None:
    with pytest.raises(RpcError) as info:
        decode_params(name, _without(valid_params(name), field))
    assert info.value.code == Code.PARAM
    assert f"params.{field}" in info.value.msg


def test_missing_nested_field_names_the_path() -> None:
    params = valid_params("Keepalive")
    params["channels"][0] = _without(params["channels"][0], "state")
    with pytest.raises(RpcError) as info:
        decode_params("Keepalive", params)
    assert info.value.code == 12
    assert "params.channels[0].state" in info.value.msg


def test_no_params_at_all_is_12() -> None:
    with pytest.raises(RpcError) as info:
        decode_params("PushLive", None)
    assert info.value.code == 12
    with pytest.raises(RpcError) as info:
        decode_params("SetConfig", None)
    assert info.value.code == 12


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [("PushLive", "channel", "0"), ("PushLive", "channel", 0.0), ("PushLive", "channel", True),
     ("PushLive", "url", 5), ("PushLive", "max_bitrate", "2000000"),
     ("PushLive", "max_bitrate", 1.5), ("StopLive", "stream_id", None),
     ("StartRecord", "start_ts", "1764000000"), ("Settime", "tz", "8"),
     ("CtrlVideo", "op", "rewind"), ("CtrlPTZ", "op", "spin"), ("Keepalive", "channels", {}),
     ("LogUploadAsync", "trans_id", 4.2), ("AlarmNotify", "state", "begin")],
)  # fmt: skip
def test_wrong_type_is_12(name: str, field: str, value: Any) -> None:
    with pytest.raises(RpcError) as info:
        decode_params(name, {**valid_params(name), field: value})
    assert info.value.code == 12
    assert field in info.value.msg


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [("PushLive", "channel", -1), ("PushLive", "channel", 256), ("PushLive", "max_bitrate", -5),
     ("StartRecord", "max_bitrate", -5), ("StartRecord", "seg_duration", 0),
     ("StartRecord", "cbk_url", "https://" + "x" * 256), ("PushLive", "url", ""),
     ("PushLive", "stream_id", ""), ("BatteryChange", "battery", 101),
     ("BatteryChange", "battery", -1), ("Settime", "datetime", "2024-13-01 00:00"),
     ("Settime", "datetime", "2024-13-01T00:00:00"),
     ("Settime", "datetime", "2024-12-01T24:00:00"),
     ("Settime", "datetime", "2023-02-29T00:00:00"),
     ("Settime", "datetime", "2024-01-01T00:00:00\n"),
     ("Settime", "tz", 15), ("Settime", "offset", -1), ("KeepAwaken", "expired", 86_401),
     ("LogUploadAsync", "end", "2024-04-31T00:00:00"), ("GetPTZPresetList", "channel", -1)],
)  # fmt: skip
def test_out_of_range_is_12(name: str, field: str, value: Any) -> None:
    with pytest.raises(RpcError) as info:
        decode_params(name, {**valid_params(name), field: value})
    assert info.value.code == 12
    assert field in info.value.msg


def test_leap_day_and_edges_are_fine() -> None:
    for dt in ("2024-02-29T00:00:00", "1999-12-31T23:59:59", "2025-01-01T00:00:00"):
        assert decode_params("Settime", {"datetime": dt, "offset": 0}).datetime == dt


def test_unknown_method_is_101() -> None:
    with pytest.raises(RpcError) as info:
        decode_params("Teleport", {"channel": 0})
    assert info.value.code == Code.UNSUPPORTED_METHOD
    assert "Teleport" in info.value.msg


@pytest.mark.parametrize("name", ALL)
def test_extra_fields_are_ignored(name: str) -> None:
    fixture = load(name)
    frame = fixture.get("request") or fixture["event"]
    params = {**frame.get("params", {}), "x_vendor": {"a": [1, 2]}, "zz": None}
    decoded = decode_params(name, params)
    if MESSAGES[name].params not in (None, dict):
        assert "x_vendor" not in to_builtins(decoded)
    if "reply" in fixture:
        resp = {**fixture["reply"]["resp"], "x_vendor": True}
        decode_result(name, resp)


def test_bad_result_is_12() -> None:
    with pytest.raises(RpcError) as info:
        decode_result("GetDiskInfo", {"state": 7, "total": 1, "free": 1})
    assert info.value.code == 12 and "GetDiskInfo" in info.value.msg
    with pytest.raises(RpcError):
        decode_result("QueryTime", {"tz": 8})
    assert decode_result("GetServerInfo", None) == vd.GetServerInfoResp()


def test_optional_params_default() -> None:
    p = decode_params("StopLive", {"stream_id": "s"})
    assert p.channel is None
    p = decode_params("StartRecord", _without(valid_params("StartRecord"), "prerecord_seconds"))
    assert p.prerecord_seconds == 0
    p = decode_params("LogUploadAsync", {**valid_params("LogUploadAsync"), "trans_id": "t-42"})
    assert p.trans_id == "t-42"  # echoed with the JSON type it came in


# --- parse_frame edge cases -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "seq"),
    [(b'{"req":"Keepalive","seq":1}', None),  # binary frame
     ("", None), ("{", None), ("not json", None), ('{"req":"X","seq":1,}', None),
     ("[1,2]", None), ('"req"', None), ("null", None), ("5", None),
     ('{"req": 5, "seq": 1}', 1), ('{"req": "", "seq": 2}', 2), ('{"req": null, "seq": 3}', 3),
     ('{"req": "X"}', None), ('{"req": "X", "seq": true}', None), ('{"req": "X", "seq": -1}', None),
     ('{"req": "X", "seq": 1.0}', None), ('{"req": "X", "seq": "1"}', None),
     ('{"req": "X", "seq": 9007199254740993}', None),
     ('{"req": "X", "seq": 4, "params": []}', 4), ('{"req": "X", "seq": 4, "params": "a"}', 4),
     ('{"seq": 1, "err": {"msg": "no code"}}', None), ('{"seq": 1, "err": {"code": "12"}}', None),
     ('{"seq": 1, "err": 12}', None), ('{"resp": {}}', None), ('{"seq": -3, "resp": {}}', None),
     ('{"event": 1}', None), ('{"event": ""}', None), ('{"event": "X", "params": [1]}', None),
     ('{"params": {}}', None), ("{}", None), ('{"name": "Keepalive", "seq": 1}', None),
     ("[" * 100_000, None), ('{"a":' * 50_000, None), ("\ud800", None), ('"\udfff"', None)],
)  # fmt: skip
def test_malformed(data: str | bytes, seq: int | None) -> None:
    got = parse_frame(data)
    assert isinstance(got, Malformed), got
    assert got.seq == seq
    assert got.reason


def test_malformed_request_with_seq_is_owed_a_400() -> None:
    got = parse_frame('{"req": 5, "seq": 1}')
    assert isinstance(got, Malformed) and got.seq == 1
    assert json.loads(encode_error(1, Code.INPUT, got.reason)) == {
        "seq": 1,
        "err": {"code": 400, "msg": got.reason},
    }


def test_reply_with_scalar_resp_still_answers() -> None:
    got = parse_frame('{"seq": 4, "resp": "ok"}')
    assert got == Reply(4, {"value": "ok"}, None)
    assert parse_frame('{"seq": 4, "resp": null}') == Reply(4, {}, None)
    assert parse_frame('{"seq": 4}') == Malformed("neither req, event, resp nor err")


def test_error_reply() -> None:
    got = parse_frame('{"seq": 9, "err": {"code": 102, "msg": "channel 3 does not exist"}}')
    assert isinstance(got, Reply) and got.err is not None
    assert (got.err.code, got.err.msg, got.resp) == (102, "channel 3 does not exist", None)
    got = parse_frame('{"seq": 9, "err": {"code": 1}}')
    assert isinstance(got, Reply) and got.err is not None and got.err.msg == ""
    got = parse_frame('{"seq": 9, "err": {"code": 1, "msg": 5}}')
    assert isinstance(got, Reply) and got.err is not None and got.err.msg == "5"


def test_unknown_top_level_fields_are_tolerated() -> None:
    got = parse_frame('{"req":"GetCap","seq":3,"ts":1,"trace":{"id":"x"}}')
    assert got == Request("GetCap", 3, None)
    got = parse_frame('{"event":"Reschedule","id":"e1","params":{"why":"move"}}')
    assert got == Event("Reschedule", {"why": "move"})
    got = parse_frame('{"seq":3,"resp":{"a":1},"server":"x"}')
    assert got == Reply(3, {"a": 1}, None)
    assert parse_frame('{"req":"GetCap","seq":3,"params":null}') == Request("GetCap", 3, None)


def test_events_are_never_answered() -> None:
    got = parse_frame('{"event":"RebootChannel","params":{"channel":0},"seq":12}')
    assert isinstance(got, Event)
    assert not hasattr(got, "seq")


def test_seq_bounds() -> None:
    assert parse_frame('{"req":"X","seq":0}') == Request("X", 0, None)
    assert parse_frame(f'{{"req":"X","seq":{2**53}}}') == Request("X", 2**53, None)


# --- login_url ----------------------------------------------------------------------


def _login(password: str = "s3cret", sdk: str | None = None, reconnect: bool = False) -> str:
    return login_url(
        "wss://vd.example.net:8443/Vd",
        login_code="PU-0001",
        login_passwd=password,
        hardware_model="RPI5-CAM3-PTZ",
        firmware_model="hss-pu-pi-0.1.0",
        sdk=sdk,
        reconnect=reconnect,
    )


def test_login_url_field_order() -> None:
    assert _login() == (
        "wss://vd.example.net:8443/Vd?login_code=PU-0001&login_passwd=s3cret"
        "&hardware_model=RPI5-CAM3-PTZ&firmware_model=hss-pu-pi-0.1.0&reconnect=0"
    )
    url = _login(sdk="2.1", reconnect=True)
    keys = [kv.split("=")[0] for kv in urlsplit(url).query.split("&")]
    assert keys == [
        "login_code", "login_passwd", "hardware_model", "firmware_model", "sdk", "reconnect",
    ]  # fmt: skip
    assert url.endswith("&sdk=2.1&reconnect=1")


@pytest.mark.parametrize("password", ["p@ss w&rd=1", "a+b%20c", "#?/é€", "=&=&"])
def test_login_password_round_trips(password: str) -> None:
    url = _login(password)
    query = urlsplit(url).query
    assert urlsplit(url).fragment == ""  # "#" did not cut the URL short
    assert parse_qs(query, strict_parsing=True)["login_passwd"] == [password]
    assert query.count("&") == 4  # no separator leaked from the password


@pytest.mark.parametrize(("reconnect", "flag"), [(False, "0"), (True, "1")])
def test_login_reconnect(reconnect: bool, flag: str) -> None:
    assert parse_qs(urlsplit(_login(reconnect=reconnect)).query)["reconnect"] == [flag]


# --- properties ---------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FRAME_KEYS = ["req", "event", "seq", "params", "resp", "err", "code", "msg"]
# Objects made of the frame's own keys reach every branch of parse_frame.
frame_like = st.dictionaries(
    st.sampled_from(FRAME_KEYS),
    json_values | st.sampled_from(sorted(MESSAGES)) | st.integers(-2, 2**53 + 2),
    max_size=5,
)
param_dicts = st.dictionaries(
    st.sampled_from(["channel", "url", "stream_id", "datetime", "offset", "channels", "op"])
    | st.text(max_size=8),
    json_values,
    max_size=6,
)
FRAME_TYPES = (Request, Event, Reply, Malformed)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


frame_chars = st.sampled_from('{}[]":,0123456789-.eE ') | st.characters()
# Lone surrogates too (a str that cannot be UTF-8 encoded). Joined from a list, as st.text
# merges its alphabet into one character set that leaves surrogates out again.
surrogates = st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010, exclude_categories=())
with_surrogates = st.lists(frame_chars | surrogates, max_size=30).map("".join)


@PROPS
@given(st.text() | st.binary() | st.text(frame_chars) | with_surrogates)
def test_parse_frame_never_raises_on_text_or_bytes(data: str | bytes) -> None:
    assert isinstance(parse_frame(data), FRAME_TYPES)


@PROPS
@given(json_values | frame_like)
def test_parse_frame_never_raises_on_json(value: Any) -> None:
    frame = parse_frame(json.dumps(value))
    assert isinstance(frame, FRAME_TYPES)
    if isinstance(frame, Request):
        assert isinstance(frame.seq, int) and not isinstance(frame.seq, bool)
        assert frame.seq >= 0
    if isinstance(frame, Malformed) and frame.seq is not None:
        assert isinstance(value, dict) and "req" in value  # only requests are owed a 400


@PROPS
@given(st.sampled_from(sorted(MESSAGES)), param_dicts)
def test_decode_params_returns_or_raises_rpc_error(name: str, params: dict[str, Any]) -> None:
    try:
        decoded = decode_params(name, params)
    except RpcError as exc:
        assert exc.code == Code.PARAM
        assert exc.msg
        return
    if decoded is not None:
        to_builtins(decoded)  # and what came through can be encoded again


@PROPS
@given(st.sampled_from(sorted(MESSAGES)), param_dicts)
def test_valid_params_with_noise_still_decode(name: str, noise: dict[str, Any]) -> None:
    fixture = load(name)
    frame = fixture.get("request") or fixture["event"]
    good = frame.get("params", {})
    extra = {k: v for k, v in noise.items() if k not in good}
    decoded = decode_params(name, {**good, **extra})
    if MESSAGES[name].params not in (None, dict):
        assert to_builtins(decoded) == good


# --- issue 9: PU -> platform messages, one typed, table-driven path ---------------


def test_every_pu_message_has_its_own_params_type() -> None:
    up = [m for m in MESSAGES.values() if m.direction == "pu->platform"]
    assert {m.name for m in up} == PU_TO_PLATFORM
    for m in up:
        assert m.params is not None and m.params is not dict
        base = vd.UpCall if m.kind == "rpc" else vd.UpEvent
        assert issubclass(m.params, base), m.name
        assert vd.up_message(m.params(**valid_params(m.name))) is m
        if m.kind == "rpc":
            assert m.result is not None and m.result is not dict
    assert len({m.params for m in up}) == len(up)


def test_up_message_refuses_what_is_not_ours_to_send() -> None:
    with pytest.raises(TypeError):
        vd.up_message(vd.ChannelParams(channel=0))  # type: ignore[arg-type]


def test_encode_up_validates_before_sending() -> None:
    spec, text = vd.encode_up(vd.KeepaliveParams(mac_id="02:00:00:00:00:01", state=1), seq=3)
    assert spec.name == "Keepalive"
    assert json.loads(text) == {
        "req": "Keepalive", "params": {"mac_id": "02:00:00:00:00:01", "state": 1}, "seq": 3
    }  # fmt: skip
    spec, text = vd.encode_up(vd.BindParams(mac_id="m", bind_id="B-1"))
    assert spec.name == "Bind" and json.loads(text) == {
        "event": "Bind", "params": {"mac_id": "m", "bind_id": "B-1"}
    }  # fmt: skip
    with pytest.raises(ValueError, match="bind_id"):
        vd.encode_up(vd.BindParams(mac_id="m", bind_id=""))
    with pytest.raises(ValueError, match="Keepalive"):
        vd.encode_up(vd.KeepaliveParams(mac_id="m", state=9), seq=1)  # type: ignore[arg-type]


def test_read_result_types_the_reply() -> None:
    r, notes = vd.read_result(vd.MESSAGES["Keepalive"], {})
    assert isinstance(r, vd.KeepaliveResp) and notes == []
    r, notes = vd.read_result(vd.MESSAGES["GetServerInfo"], load("GetServerInfo")["reply"]["resp"])
    assert r == vd.GetServerInfoResp(
        hb_interval=30, hibernation="203.0.113.7:9100", hb_token="7f3a9c2e5b1d4860"
    )
    assert notes == []


@pytest.mark.parametrize(
    ("resp", "interval", "bad"),
    [({"hb_interval": 30.0}, 30.0, None), ({"hb_interval": 2.5}, 2.5, None),
     ({"hb_interval": "30"}, None, "hb_interval"), ({"hb_interval": 0}, None, "hb_interval"),
     ({"hb_interval": 99999}, None, "hb_interval"), ({"hb_interval": True}, None, "hb_interval"),
     ({"hb_interval": None}, None, None), ({"hb_interval": [30]}, None, "hb_interval")],
)  # fmt: skip
def test_server_info_reply_is_read_field_by_field(
    resp: dict[str, Any], interval: float | None, bad: str | None
) -> None:
    """One ill-typed field is ignored (with a note); the others are still used."""
    full = {**resp, "hb_token": "tok-1", "hibernation": "203.0.113.7:9100", "x": {}}
    r, notes = vd.read_result(vd.MESSAGES["GetServerInfo"], full)
    assert r.hb_interval == interval and r.hb_token == "tok-1"
    assert r.hibernation == "203.0.113.7:9100"
    if bad is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith(bad), notes
        assert "tok-1" not in notes[0]


def test_server_info_token_ill_typed_keeps_the_interval() -> None:
    r, notes = vd.read_result(vd.MESSAGES["GetServerInfo"], {"hb_interval": 5, "hb_token": 7})
    assert r.hb_interval == 5 and r.hb_token is None and notes[0].startswith("hb_token")
