"""A real RTSP server for tests and bench/channels.py: GStreamer's gst-rtsp-server.

Runs under Debian's /usr/bin/python3 (python3-gi, gir1.2-gst-rtsp-server-1.0), not the
venv's Python, so it imports nothing of hss_pu. It serves one pre-encoded H.264 file in
Matroska (made once with ffmpeg) on /cam0 .. /cam{N-1}, from its start for each client,
at the file's own pace, until its end: make it longer than the run. Each client's
pipeline only demuxes, parses and payloads, nothing is encoded, so the server's cost
stays small and the PU's is what a bench measures. With --user/--password the mounts ask for Basic
authentication (a camera's URL then carries credentials, as real ones do).

Prints "ready PORT" on stdout once it listens; stops on SIGTERM/SIGINT.

    /usr/bin/python3 tests/support/rtsp_server.py --file clip.mkv --mounts 16
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi  # type: ignore[import-not-found]

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found]  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True, help="H.264 in Matroska")
    ap.add_argument("--mounts", type=int, default=1)
    ap.add_argument("--port", type=int, default=0, help="0: any free port")
    ap.add_argument("--user", default="")
    ap.add_argument("--password", default="")
    a = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    # The container's timestamps pace the stream (the server's sink syncs to them).
    launch = (
        f'( filesrc location="{a.file}" ! matroskademux ! h264parse config-interval=-1 '
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    mounts = server.get_mount_points()
    for i in range(a.mounts):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        if a.user:
            factory.add_role_from_structure(
                Gst.Structure.new_from_string(
                    "user,media.factory.access=(boolean)true,media.factory.construct=(boolean)true"
                )
            )
        mounts.add_factory(f"/cam{i}", factory)
    if a.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, a.password), token)
        server.set_auth(auth)
    if server.attach(None) == 0:
        print("cannot listen", file=sys.stderr)
        return 1
    print(f"ready {server.get_bound_port()}", flush=True)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
