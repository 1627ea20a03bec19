#!/usr/bin/env bash
# Install the system packages hss-pu needs, only those that are missing.
# Debian-family (Debian, Raspberry Pi OS, Ubuntu): apt-get, through sudo when not root.
# Elsewhere: check that the pieces are present and say exactly what is missing.
set -euo pipefail

PYTHON=${PYTHON:-python3}
# Debian package -> what it provides (for the message when we cannot install).
declare -A PROVIDES=(
    [libsrt1.5-openssl]="libsrt.so.1.5 (SRT live push)"
    [srt-tools]="srt-live-transmit (reference platform SRT listener, tests)"
    [ffmpeg]="ffmpeg/ffprobe (tests, benchmarks)"
    [python3-gi]="GObject bindings for Debian's python3 (the RTSP test server)"
    [gir1.2-gst-rtsp-server-1.0]="GStreamer's RTSP server (RTSP cameras in tests, bench/channels.py)"
    [gstreamer1.0-plugins-good]="rtph264pay, multifilesrc (the RTSP test server)"
    [gstreamer1.0-plugins-bad]="h264parse (the RTSP test server)"
    [chromium]="the headless browser of the web console's tests (driven by Playwright)"
    [nodejs]="node (npm runs on it)"
    [npm]="npm: the web console's player libraries (package-lock.json)"
)
PKGS=(libsrt1.5-openssl srt-tools ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0
      gstreamer1.0-plugins-good gstreamer1.0-plugins-bad chromium)

say() { printf 'setup: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing_by_probe() {
    # Used where there is no dpkg: look for the files themselves.
    local m=()
    if ! { ldconfig -p 2>/dev/null | grep -q 'libsrt\.so\.1\.5' ; }; then m+=(libsrt1.5-openssl); fi
    command -v srt-live-transmit >/dev/null || m+=(srt-tools)
    { command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; } || m+=(ffmpeg)
    command -v chromium >/dev/null || m+=(chromium)
    echo "${m[@]:-}"
}

python_ok() {
    "$PYTHON" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null
}
venv_ok() {
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null
}

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11 or newer (or set PYTHON=...)"
python_ok || die "$PYTHON is $("$PYTHON" -V 2>&1); hss-pu needs Python 3.11 or newer (set PYTHON=...)"

missing=()
if command -v dpkg-query >/dev/null; then
    for p in "${PKGS[@]}"; do have_pkg "$p" || missing+=("$p"); done
    if ! venv_ok; then
        # Debian splits venv/ensurepip out of the interpreter package.
        ver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        missing+=("python${ver}-venv")
    fi
else
    read -r -a missing <<<"$(missing_by_probe)"
    venv_ok || missing+=("python-venv")
fi
# npm by its command, not its package: a node from elsewhere (nodesource's nodejs
# carries its own npm) is as good as Debian's.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)

if [ ${#missing[@]} -eq 0 ] || [ -z "${missing[0]:-}" ]; then
    say "system packages present"
    exit 0
fi

say "missing: ${missing[*]}"
if ! command -v apt-get >/dev/null; then
    for p in "${missing[@]}"; do say "  $p: ${PROVIDES[$p]:-needed}"; done
    die "no apt-get on this system: install the packages above with your package manager, then run make setup again"
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: run 'apt-get install ${missing[*]}' as root, then make setup again"
    SUDO=(sudo)
    # Non-interactive runs (CI) must not hang on a password prompt.
    if [ ! -t 0 ]; then SUDO=(sudo -n); fi
fi

export DEBIAN_FRONTEND=noninteractive
say "installing with apt-get: ${missing[*]}"
if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    say "install failed; refreshing the package lists and trying once more"
    "${SUDO[@]}" apt-get update -q || die "apt-get update failed (no network or no permission?)"
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed; install them by hand and run make setup again"
fi
for p in "${missing[@]}"; do
    have_pkg "$p" || die "$p still not installed after apt-get"
done
say "system packages installed"
