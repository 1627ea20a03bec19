"""A tiny ``hss-pu`` wheel for the slot tests: built by hand (offline, milliseconds), with
the one thing the slot code uses, an ``hss-pu`` console script.

The fake's ``hss-pu --version`` prints its version; ``hss-pu run ...`` appends
``<version> <args>`` to $FAKE_PU_LOG (and the launcher's $HSS_PU_ENTRY to
$FAKE_PU_ENTRY_LOG) and exits with $FAKE_PU_RC (default 0).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

MODULE = """\
import os, sys

VERSION = {version!r}


def main():
    args = sys.argv[1:]
    if args == ["--version"]:
        print("hss-pu", VERSION)
        return 0
    log = os.environ.get("FAKE_PU_LOG")
    if log:
        with open(log, "a") as f:
            f.write(VERSION + " " + " ".join(args) + "\\n")
        entry = os.environ.get("HSS_PU_ENTRY")
        if entry and os.environ.get("FAKE_PU_ENTRY_LOG"):
            with open(os.environ["FAKE_PU_ENTRY_LOG"], "w") as f:
                f.write(entry)
    return int(os.environ.get("FAKE_PU_RC", "0"))
"""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_fake_wheel(out: Path, version: str) -> Path:
    """Write ``hss_pu-<version>-py3-none-any.whl`` into ``out``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    dist = f"hss_pu-{version}.dist-info"
    files = {
        "fakepu.py": MODULE.format(version=version).encode(),
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: hss-pu\nVersion: {version}\n".encode()),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: hss-pu-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
        f"{dist}/entry_points.txt": b"[console_scripts]\nhss-pu = fakepu:main\n",
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out / f"hss_pu-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path
