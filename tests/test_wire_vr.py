"""Vr form bodies and replies: the Appendix I.3 examples, round trips, both sides' errors."""

from __future__ import annotations

import contextlib
import json
import time
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hss_pu.wire.vr import (
    CONTENT_TYPE_FORM,
    CONTENT_TYPE_TS,
    CreateReply,
    CreateRequest,
    FailRequest,
    GetCurrentTimeRequest,
    SaveRequest,
    StatRequest,
    VrFormatError,
    encode_create,
    encode_create_reply,
    encode_currenttime,
    encode_error_info,
    encode_fail,
    encode_getcurrenttime,
    encode_save,
    encode_stat,
    parse_create_reply,
    parse_currenttime,
    parse_error_info,
    parse_form,
)

# The example bodies of Appendix I.3 (stat with wire-notes' lower-case names).
CREATE = b"op=create&content_type=video%2Fmp2t&size=32768&start=1574322174&duration=600&discontinue=0&https=0"  # noqa: E501
SAVE = b"op=save&name=0003.ts"
FAIL = b"op=fail&name=0003.ts"
GETCURRENTTIME = b"op=getcurrenttime"
STAT = b"op=stat&dropped_nb=3&dropped_time=30"


def test_content_types() -> None:
    assert CONTENT_TYPE_FORM == "application/x-www-form-urlencoded"
    assert CONTENT_TYPE_TS == "video/mp2t"


# --- PU side: the exact bodies --------------------------------------------------------


def test_appendix_bodies() -> None:
    assert encode_create(32768, 1574322174, 600, False, False) == CREATE
    assert encode_create(32768, 1574322174.0, 600.0, discontinue=False, https=False) == CREATE
    assert encode_save("0003.ts") == SAVE
    assert encode_fail("0003.ts") == FAIL
    assert encode_getcurrenttime() == GETCURRENTTIME
    assert encode_stat(3, 30) == STAT
    assert encode_stat(3, 30.0) == STAT


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (0.0, "0"), (-0.0, "0"), (600, "600"), (600.5, "600.5"), (599.96666, "599.967"),
     (1574322174.04, "1574322174.04"), (1574322174.1234, "1574322174.123"), (0.0004, "0"),
     (1e20, "100000000000000000000"), (1e-7, "0"), (10.0, "10"), (0.25, "0.25")],
)  # fmt: skip
def test_numbers_plain_and_short(value: float, text: str) -> None:
    body = encode_create(1, value, value, True, True).decode()
    fields = dict(parse_qsl(body))
    assert fields["start"] == text and fields["duration"] == text
    assert "e" not in fields["start"].lower()
    assert fields["discontinue"] == "1" and fields["https"] == "1"
    assert dict(parse_qsl(encode_stat(0, value).decode()))["dropped_time"] == text


def test_field_order_and_content_type() -> None:
    body = encode_create(5, 1.5, 2, True, False, content_type="video/mp4").decode()
    assert [k for k, _ in parse_qsl(body)] == [
        "op", "content_type", "size", "start", "duration", "discontinue", "https",
    ]  # fmt: skip
    assert "content_type=video%2Fmp4&" in body


def test_names_are_escaped() -> None:
    assert encode_save("2025/11/24 a&b=c.ts") == b"op=save&name=2025%2F11%2F24+a%26b%3Dc.ts"
    assert parse_form(encode_save("2025/11/24 a&b=c.ts")) == SaveRequest("2025/11/24 a&b=c.ts")


@pytest.mark.parametrize(
    "call",
    [lambda: encode_create(-1, 0, 0, False, False), lambda: encode_create(1.5, 0, 0, False, False),  # type: ignore[arg-type]
     lambda: encode_create(True, 0, 0, False, False), lambda: encode_create(1, -1, 0, False, False),
     lambda: encode_create(1, float("nan"), 0, False, False),
     lambda: encode_create(1, 0, float("inf"), False, False), lambda: encode_save(""),
     lambda: encode_fail(""), lambda: encode_stat(-1, 0), lambda: encode_stat(0, -0.5)],
)  # fmt: skip
def test_we_never_send_nonsense(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=r"size|start|duration|name|dropped"):
        call()


# --- PU side: replies ---------------------------------------------------------------


def test_create_reply() -> None:
    body = b'{"name": "0003.ts", "url": "https://cs.example.net/up/0003.ts?sig=1", "ttl": 60}'
    reply = parse_create_reply(body)
    assert reply == CreateReply("0003.ts", "https://cs.example.net/up/0003.ts?sig=1")
    assert not reply.drop


def test_create_reply_uri_alias() -> None:
    reply = parse_create_reply(b'{"name": "0003.ts", "uri": "https://cs.example.net/u"}')
    assert reply == CreateReply("0003.ts", "https://cs.example.net/u")
    # Both sent: the Recommendation's name wins.
    both = parse_create_reply(b'{"name": "n", "url": "https://a/", "uri": "https://b/"}')
    assert both.url == "https://a/"


@pytest.mark.parametrize(
    "body",
    [b'{"name": "", "url": ""}', b'{"name": "", "url": "https://a/"}', b'{"name": "n", "url": ""}',
     b'{"name": null, "url": null}', b'{"name": "n", "uri": ""}', b'{"name": "n", "url": null}'],
)  # fmt: skip
def test_empty_name_or_url_means_drop(body: bytes) -> None:
    assert parse_create_reply(body).drop


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b"null", b'"x"', b"{}", b'{"name": "n"}', b'{"url": "https://a/"}',
     b'{"name": 3, "url": "https://a/"}', b'{"name": "n", "url": ["https://a/"]}',
     b'{"info": "no space left"}', b"\xff\xfe", b"[" * 100_000],
)  # fmt: skip
def test_bad_create_replies(body: bytes) -> None:
    with pytest.raises(VrFormatError, match="create reply"):
        parse_create_reply(body)


def test_currenttime() -> None:
    assert parse_currenttime(b'{"currenttime": 1574322174.5}') == 1574322174.5
    assert parse_currenttime(b'{"currenttime": 1574322174, "tz": 8}') == 1574322174.0
    assert parse_currenttime(encode_currenttime(1764000000.1234)) == 1764000000.123


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"currenttime": "1574322174"}', b'{"currenttime": -1}',
     b'{"currenttime": null}', b'{"currenttime": true}', b'{"time": 1}', b"1574322174"],
)  # fmt: skip
def test_bad_currenttime(body: bytes) -> None:
    with pytest.raises(VrFormatError, match="getcurrenttime"):
        parse_currenttime(body)


def test_error_info() -> None:
    assert parse_error_info(b'{"info": "segment unknown", "code": 7}') == "segment unknown"
    assert parse_error_info(encode_error_info("quota exceeded")) == "quota exceeded"
    for body in (b"", b"{}", b'{"info": 5}', b"<html>502</html>"):
        with pytest.raises(VrFormatError, match="error reply"):
            parse_error_info(body)


# --- platform side --------------------------------------------------------------------


def test_parse_appendix_bodies() -> None:
    assert parse_form(CREATE) == CreateRequest(
        content_type="video/mp2t",
        size=32768,
        start=1574322174.0,
        duration=600.0,
        discontinue=False,
        https=False,
    )
    assert parse_form(SAVE) == SaveRequest("0003.ts")
    assert parse_form(FAIL) == FailRequest("0003.ts")
    assert parse_form(GETCURRENTTIME) == GetCurrentTimeRequest()
    assert parse_form(STAT) == StatRequest(dropped_nb=3, dropped_time=30.0)


def test_ops_are_tags() -> None:
    ops = [parse_form(b).op for b in (CREATE, SAVE, FAIL, GETCURRENTTIME, STAT)]
    assert ops == ["create", "save", "fail", "getcurrenttime", "stat"]


def test_stat_field_spellings() -> None:
    # The table's capitalised names are accepted; both are optional there.
    assert parse_form(b"op=stat&Dropped_nb=3&Dropped_time=30.5") == StatRequest(
        dropped_nb=3, dropped_time=30.5
    )
    assert parse_form(b"op=stat") == StatRequest(dropped_nb=0, dropped_time=0.0)
    with pytest.raises(VrFormatError, match="dropped_nb and Dropped_nb"):
        parse_form(b"op=stat&dropped_nb=3&Dropped_nb=3")


def test_tolerant_of_extra_fields_and_other_number_spellings() -> None:
    body = CREATE.replace(b"start=1574322174", b"start=1.574322174e9") + b"&codec=h264&x="
    req = parse_form(body)
    assert isinstance(req, CreateRequest) and req.start == 1574322174.0
    assert parse_form(b"https=1&op=save&name=a") == SaveRequest("a")


def _create_with(field: str, value: str | None) -> bytes:
    """The I.3.1 example with one field changed (None: left out)."""
    pairs = [kv.split("=", 1) for kv in CREATE.decode().split("&")]
    out = [f"{k}={value if k == field else v}" for k, v in pairs if k != field or value is not None]
    return "&".join(out).encode()


@pytest.mark.parametrize(
    ("field", "value"),
    [("size", None), ("size", "-1"), ("size", "1.5"), ("size", "1e3"), ("size", " 3"),
     ("size", "1_000"), ("size", "+3"), ("size", ""), ("size", "0x10"),
     ("start", None), ("start", "-1"), ("start", "nan"), ("start", "inf"), ("start", "1e999"),
     ("start", ""), ("start", "1,5"), ("duration", None), ("duration", "-0.5"),
     ("duration", "ten"), ("discontinue", None), ("discontinue", "2"), ("discontinue", "true"),
     ("discontinue", ""), ("https", None), ("https", "yes"), ("https", "-1"),
     ("content_type", None), ("content_type", "")],
)  # fmt: skip
def test_create_errors_name_the_field(field: str, value: str | None) -> None:
    with pytest.raises(VrFormatError, match=rf"\b{field}\b"):
        parse_form(_create_with(field, value))


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"", "op"), (b"name=a", "op"), (b"op=", "op"), (b"op=delete&name=a", "op"),
     (b"op=CREATE", "op"), (b"op=save", "name"), (b"op=save&name=", "name"), (b"op=fail", "name"),
     (b"op=stat&dropped_nb=x", "dropped_nb"), (b"op=stat&Dropped_nb=-3", "Dropped_nb"),
     (b"op=stat&dropped_time=-1", "dropped_time"), (b"op=stat&Dropped_time=abc", "Dropped_time"),
     (b"op=save&name=a&name=b", "name"), (b"op=save&op=fail&name=a", "op")],
)  # fmt: skip
def test_other_errors_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(VrFormatError, match=rf"\b{field}\b"):
        parse_form(body)


@pytest.mark.parametrize(
    "body", [b"\xff\xfe", b"op=save&name=%ff", b"&".join([b"a=1"] * 100) + b"&op=getcurrenttime"]
)
def test_unparseable_forms(body: bytes) -> None:
    with pytest.raises(VrFormatError):
        parse_form(body)


def test_huge_numbers_are_format_errors_and_fast() -> None:
    with pytest.raises(VrFormatError, match="size"):
        parse_form(_create_with("size", "9" * 5000))  # int() itself would refuse it
    start = time.monotonic()
    for bad in ("1" * 200_000 + "x", "1" * 200_000 + ".5e"):
        with pytest.raises(VrFormatError, match="start"):
            parse_form(_create_with("start", bad))
    assert time.monotonic() - start < 1.0
    req = parse_form(_create_with("size", "9" * 18))
    assert isinstance(req, CreateRequest) and req.size == 10**18 - 1


def test_platform_replies() -> None:
    assert json.loads(encode_create_reply("0003.ts", "https://cs/u")) == {
        "name": "0003.ts",
        "url": "https://cs/u",
    }
    assert parse_create_reply(encode_create_reply("", "")).drop
    assert json.loads(encode_currenttime(1574322174.5)) == {"currenttime": 1574322174.5}
    assert json.loads(encode_error_info("no such segment")) == {"info": "no such segment"}


# --- round trips ----------------------------------------------------------------------

times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
names = st.text(min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2**40), times, times, st.booleans(), st.booleans())
def test_create_round_trip(
    size: int, start: float, duration: float, dis: bool, https: bool
) -> None:
    req = parse_form(encode_create(size, start, duration, dis, https))
    assert isinstance(req, CreateRequest)
    assert (req.size, req.discontinue, req.https) == (size, dis, https)
    assert req.content_type == CONTENT_TYPE_TS
    assert req.start == pytest.approx(start, abs=0.0005)
    assert req.duration == pytest.approx(duration, abs=0.0005)


@settings(max_examples=100, deadline=None)
@given(names, st.integers(min_value=0, max_value=2**31), times)
def test_other_round_trips(name: str, nb: int, t: float) -> None:
    assert parse_form(encode_save(name)) == SaveRequest(name)
    assert parse_form(encode_fail(name)) == FailRequest(name)
    stat = parse_form(encode_stat(nb, t))
    assert isinstance(stat, StatRequest) and stat.dropped_nb == nb
    assert stat.dropped_time == pytest.approx(t, abs=0.0005)
    reply = parse_create_reply(encode_create_reply(name, "https://cs.example.net/" + name))
    assert reply == CreateReply(name, "https://cs.example.net/" + name) and not reply.drop


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_parsers_raise_only_vr_format_error(body: bytes) -> None:
    for parse in (parse_form, parse_create_reply, parse_currenttime, parse_error_info):
        with contextlib.suppress(VrFormatError):
            parse(body)
