"""One rule for what of a URL is shown (hss_pu/wire/urls.py), and no private copies."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

import hss_pu
from hss_pu.srt import parse_srt_url
from hss_pu.wire.urls import UNPARSEABLE, redact_url, scrub_url


def test_user_info_query_values_and_fragment_go() -> None:
    assert redact_url("rtsp://u:p@cam:554/s?x=1") == "rtsp://***@cam:554/s?x=***"
    assert redact_url("rtsp://admin:p@ss@cam/s") == "rtsp://***@cam/s"  # a raw '@' too
    assert (
        redact_url("https://s3.example/b/seg.ts?X-Amz-Signature=abc&X-Amz-Expires=60#frag")
        == "https://s3.example/b/seg.ts?X-Amz-Signature=***&X-Amz-Expires=***"
    )
    assert redact_url("https://h/upload?abcdef0123") == "https://h/upload?***"  # bare token
    assert redact_url("https://h/x?a%20b=1&=2&&ok=3") == "https://h/x?***&***&ok=***"
    assert redact_url("https://h/p#access_token=abc") == "https://h/p"
    assert redact_url("https://[::1]:8443/x?y=1") == "https://[::1]:8443/x?y=***"


def test_srt_tuning_stays_secrets_do_not() -> None:
    url = "srt://h:9000?streamid=#!::u=cam,t=tok&latency=200&passphrase=0123456789&maxbw=-1"
    assert redact_url(url) == "srt://h:9000?streamid=***&latency=200&passphrase=***&maxbw=-1"
    # A tuning name with a value that is no plain integer is hidden like any other.
    assert redact_url("srt://h:1?latency=abc") == "srt://h:1?latency=***"
    u = parse_srt_url("srt://h:1?streamid=live/cam-1&passphrase=0123456789&pbkeylen=16")
    assert u.redacted() == (
        "srt://h:1?streamid=***&latency=200&passphrase=***&pbkeylen=16&connect_timeout=3000"
    )


def test_what_is_not_a_url_comes_back_unchanged() -> None:
    for spec in ("emulated", "/dev/video0", "v4l2:/dev/video0", "file:/srv/clip.mp4",
                 "https://h.example/path", "picamera2", ""):  # fmt: skip
        assert redact_url(spec) == spec
    assert redact_url("https://[::1/x?t=secret") == UNPARSEABLE


def test_scrub_url_takes_the_url_and_its_secrets_out_of_free_text() -> None:
    url = "https://user:pw1234@h.example/x?sig=S3CR3T%2Fxyz&latency=1200"
    text = f"ConnectError: cannot reach {url}; signature S3CR3T/xyz expired for user (latency 1200)"
    out = scrub_url(text, url)
    assert "S3CR3T" not in out and "pw1234" not in out and "user:" not in out
    assert "https://***@h.example/x?sig=***&latency=1200" in out
    assert "(latency 1200)" in out  # a shown value is not treated as a secret
    assert scrub_url("nothing to see", "") == "nothing to see"


_SECRET = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789~!$+,;:", min_size=6, max_size=30)
_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10)


@given(
    scheme=st.sampled_from(["https", "http", "rtsp", "srt", "wss"]),
    host=_WORD,
    path=st.lists(_WORD, max_size=3),
    user=st.one_of(st.none(), _SECRET),
    password=st.one_of(st.none(), _SECRET),
    params=st.lists(st.tuples(_WORD, _SECRET), max_size=4),
    fragment=st.one_of(st.none(), _SECRET),
    encode=st.booleans(),
)
def test_no_secret_survives(
    scheme: str,
    host: str,
    path: list[str],
    user: str | None,
    password: str | None,
    params: list[tuple[str, str]],
    fragment: str | None,
    encode: bool,
) -> None:
    """Secrets in the user info, any query value or the fragment never come out, raw or
    percent-encoded, whatever the parameter is called."""

    def q(s: str) -> str:
        return quote(s, safe="") if encode else s.replace("&", "").replace("#", "")

    secrets = [s for s in (user, password, fragment) if s] + [v for _, v in params]
    userinfo = ""
    if user is not None:
        userinfo = q(user) + (f":{q(password)}" if password else "") + "@"
    url = f"{scheme}://{userinfo}{host}.example:8443/{'/'.join(path)}"
    if params:
        url += "?" + "&".join(f"{k}={q(v)}" for k, v in params)
    if fragment:
        url += "#" + q(fragment)
    out = redact_url(url)
    for s in secrets:
        assert q(s) not in out and s not in out, (url, out)
    assert f"{host}.example:8443" in out
    for k, _ in params:
        assert f"{k}=***" in out


PENDING: set[str] = set()  # no private copy of the rule anywhere
_COPY = re.compile(r"(redact|safe|scrub|strip|clean|hide).*url|url.*(redact|safe|scrub)", re.I)


def test_no_module_keeps_its_own_url_redaction() -> None:
    root = Path(hss_pu.__file__).parent
    copies = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).as_posix()
        if rel == "hss_pu/wire/urls.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _COPY.search(node.name):
                copies.add(f"{rel}:{node.name}")
    assert copies <= PENDING, copies - PENDING
    # The SRT URL's own display goes through the rule too.
    srt_url = (root / "srt" / "url.py").read_text()
    assert "redact_url(" in srt_url
