#!/usr/bin/env bash
# Install (or upgrade) hss-pu as a systemd service from this checkout.
# `make install` runs it on a Raspberry Pi or any systemd Debian host.
#
#   scripts/install.sh [--dry-run] [--prefix DIR]
#
#   --dry-run     print the commands that would change the system, run none
#                 of them (read-only probes still run); no root needed
#   --prefix DIR  with --dry-run: plan against DIR as the root file system
#                 (DIR/etc/passwd, DIR/etc/hss-pu/config.toml, ...); for tests
#   PYTHON=...    the interpreter the venv is built on (default /usr/bin/python3)
#
# Re-running it installs the code as a new /opt/hss-pu/versions/<version>, switches
# /opt/hss-pu/current to it (the one before stays as previous), upgrades the unit, and
# keeps /etc/hss-pu/config.toml and /var/lib/hss-pu. Exit status: 0 when installed (started, or waiting for a
# freshly installed config to be edited), 1 on error or when an existing config
# fails `hss-pu check-config` (the service is then not restarted).
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
SRC=$(dirname "$(dirname "$SCRIPT")")
ARGS=("$@")

NAME=hss-pu
OPT=/opt/hss-pu
VENV=$OPT/venv
ETC=/etc/hss-pu
CONFIG=$ETC/config.toml
UNIT=/etc/systemd/system/$NAME.service
DROPIN=/etc/systemd/system/$NAME.service.d/50-install-groups.conf
STATE=/var/lib/hss-pu
DEVICE_GROUPS=(video gpio)
# The system interpreter: apt's picamera2 lives in its site-packages, and a
# pyenv or conda python in root's PATH is no base for a system service.
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; fi
fi

DRY_RUN=0
ROOT=""

say() { printf 'install: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SCRIPT"; }

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --prefix)
            [ $# -ge 2 ] || die "--prefix needs a directory"
            ROOT=$2
            shift
            ;;
        --prefix=*) ROOT=${1#--prefix=} ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

ROOT=${ROOT%/}
if [ -n "$ROOT" ]; then
    [ "$DRY_RUN" = 1 ] || die "--prefix is only supported with --dry-run"
    [ -d "$ROOT" ] || die "--prefix $ROOT: no such directory"
    ROOT=$(readlink -f "$ROOT")
fi

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11 or newer (or set PYTHON=...)"
PYTHON=$(command -v "$PYTHON")

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run this as root (no sudo here)"
    sudo_cmd=(sudo)
    # Non-interactive runs must not hang on a password prompt.
    [ -t 0 ] || sudo_cmd=(sudo -n)
    say "not root: re-running with ${sudo_cmd[*]}"
    exec "${sudo_cmd[@]}" -- env "PYTHON=$PYTHON" "$BASH" "$SCRIPT" "${ARGS[@]}"
fi

# Everything below uses absolute paths; a checkout in /home/pi must not be the
# working directory of commands run as the hss-pu user.
cd /

# --- helpers -------------------------------------------------------------------

# run CMD...: the plan on stdout with --dry-run; otherwise traced to stderr and run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        {
            printf '+'
            printf ' %q' "$@"
            printf '\n'
        } >&2
        "$@"
    fi
}

# write_file PATH MODE CONTENT
write_file() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ cat > %q <<'"'"'EOF'"'"'\n%s\nEOF\n' "$1" "$3"
        return
    fi
    local tmp
    install -d -m 0755 "$(dirname "$1")"
    tmp=$(mktemp)
    printf '%s\n' "$3" >"$tmp"
    install -m "$2" "$tmp" "$1"
    rm -f "$tmp"
}

note() {
    if [ "$DRY_RUN" = 1 ]; then printf '# %s\n' "$*"; fi
}

has_group() {
    if [ -n "$ROOT" ]; then
        grep -q "^$1:" "$ROOT/etc/group" 2>/dev/null
    else
        getent group "$1" >/dev/null
    fi
}

has_user() {
    if [ -n "$ROOT" ]; then
        grep -q "^$1:" "$ROOT/etc/passwd" 2>/dev/null
    else
        getent passwd "$1" >/dev/null
    fi
}

# in_group USER GROUP: USER is listed as a member of GROUP
in_group() {
    local members
    if [ -n "$ROOT" ]; then
        members=$(awk -F: -v g="$2" '$1 == g { print $4 }' "$ROOT/etc/group" 2>/dev/null)
    else
        members=$(getent group "$2" | cut -d: -f4)
    fi
    [[ ",$members," == *",$1,"* ]]
}

is_pi() { grep -qas "Raspberry Pi" "$ROOT/proc/device-tree/model"; }

python_ok() { "$1" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; }

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

# --- preflight -----------------------------------------------------------------

python_ok "$PYTHON" || die "$PYTHON is $("$PYTHON" -V 2>&1); hss-pu needs Python 3.11 or newer (set PYTHON=...)"
EXAMPLE=$SRC/docs/config.example.toml
[ -f "$SRC/systemd/$NAME.service" ] || die "$SRC/systemd/$NAME.service is missing; run this from a checkout"
if [ "$DRY_RUN" = 0 ]; then
    for tool in useradd groupadd usermod install systemctl; do
        command -v "$tool" >/dev/null || die "$tool not found; this installer needs a systemd Debian host"
    done
fi
if [ "$DRY_RUN" = 1 ]; then
    printf '# hss-pu install plan for %s (root: %s)\n' "$SRC" "${ROOT:-/}"
fi
say "installing hss-pu from $SRC"

WAS_ACTIVE=0
if systemd_running && systemctl is-active --quiet "$NAME.service"; then
    WAS_ACTIVE=1
fi

# --- user and groups -----------------------------------------------------------

if has_group "$NAME"; then
    say "group $NAME exists"
else
    run groupadd --system "$NAME"
fi
if has_user "$NAME"; then
    say "user $NAME exists"
else
    run useradd --system --gid "$NAME" --no-create-home --home-dir "$STATE" \
        --shell /usr/sbin/nologin --comment "hss-pu premises unit" "$NAME"
fi

present=()
missing=()
for g in "${DEVICE_GROUPS[@]}"; do
    if has_group "$g"; then present+=("$g"); else missing+=("$g"); fi
done
add=()
for g in "${present[@]}"; do
    in_group "$NAME" "$g" || add+=("$g")
done
if [ ${#add[@]} -gt 0 ]; then
    run usermod --append --groups "$(IFS=,; echo "${add[*]}")" "$NAME"
fi

# The unit lists SupplementaryGroups=video gpio, and systemd refuses to start a
# service whose group does not exist (a laptop has no gpio group).
if [ ${#missing[@]} -gt 0 ]; then
    say "no group(s) ${missing[*]} on this host: leaving them out of the service"
    write_file "$ROOT$DROPIN" 0644 "# Written by scripts/install.sh: this host has no group ${missing[*]}.
# Rerun the installer after creating it to drop this file.
[Service]
SupplementaryGroups=
SupplementaryGroups=${present[*]}"
elif [ -e "$ROOT$DROPIN" ]; then
    run rm -f "$ROOT$DROPIN"
    run rmdir --ignore-fail-on-non-empty "$(dirname "$ROOT$DROPIN")"
fi

# --- code ----------------------------------------------------------------------

# Every install is a new version directory, /opt/hss-pu/versions/<name>, with its own
# venv; the unit runs /opt/hss-pu/current, a link switched only once the new version is
# complete (docs/protocol.md, reading 33). The daemon, as hss-pu, installs later versions
# the same way (firmware upgrade), so it owns the tree.
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$PYTHON cannot create a venv: apt-get install python3-venv"
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/hss_pu/__init__.py")
[ -n "$VERSION" ] || die "$SRC/hss_pu/__init__.py names no __version__"
NEW_NAME="$VERSION+local.$(date -u +%Y%m%d%H%M%S)"
NEW=$OPT/versions/$NEW_NAME
run install -d -m 0755 -o "$NAME" -g "$NAME" "$ROOT$OPT" "$ROOT$OPT/versions"
# --system-site-packages: on Raspberry Pi OS picamera2 and lgpio come from apt.
run "$PYTHON" -m venv --system-site-packages "$ROOT$NEW/venv"

target=$SRC
if is_pi; then
    say "Raspberry Pi: installing with the pi extra"
    target="${SRC}[pi]"
fi
# Not editable: the service keeps working when the checkout is moved or deleted.
run "$ROOT$NEW/venv/bin/python" -m pip install --disable-pip-version-check "$target"
run "$ROOT$NEW/venv/bin/hss-pu" --version
run chown -R "$NAME:$NAME" "$ROOT$NEW"
# fsync, the COMPLETE marker, current -> it (previous -> the one before), state.json;
# older versions are removed. As hss-pu, so what it writes is the daemon's.
adopt=("$NEW/venv/bin/python" -m hss_pu.firmware.slots adopt "$OPT" "$NEW_NAME")
if command -v runuser >/dev/null; then
    adopt=(runuser -u "$NAME" -- "${adopt[@]}")
fi
run "${adopt[@]}"
if [ -e "$ROOT$VENV" ]; then
    # The layout before versions/: one venv the unit ran directly.
    note "the old single venv is replaced by $OPT/current"
    run rm -rf "$ROOT$VENV"
fi
if [ -f "$SRC/docs/systemd.md" ]; then
    # The unit's Documentation= points here.
    run install -D -m 0644 "$SRC/docs/systemd.md" "$ROOT$OPT/docs/systemd.md"
fi

# --- unit and configuration ----------------------------------------------------

run install -D -m 0644 "$SRC/systemd/$NAME.service" "$ROOT$UNIT"

# root:hss-pu 0750 matches the unit's ConfigurationDirectoryMode; systemd never
# changes an existing configuration directory.
run install -d -m 0750 -o root -g "$NAME" "$ROOT$ETC"
FRESH_CONFIG=0
if [ -e "$ROOT$CONFIG" ] || [ -L "$ROOT$CONFIG" ]; then
    say "keeping the existing $CONFIG"
else
    if [ ! -f "$EXAMPLE" ]; then
        [ "$DRY_RUN" = 1 ] || die "$EXAMPLE is missing; cannot install a starting config"
        say "WARNING: $EXAMPLE is missing"
    fi
    # It will hold the platform credentials: readable by the daemon only.
    run install -m 0600 -o "$NAME" -g "$NAME" "$EXAMPLE" "$ROOT$CONFIG"
    FRESH_CONFIG=1
fi

# --- service -------------------------------------------------------------------

if systemd_running || [ "$DRY_RUN" = 1 ]; then
    run systemctl daemon-reload
fi

# As the service user, so an unreadable config is caught here and not at start.
check=("$OPT/current/venv/bin/hss-pu" check-config "$CONFIG")
if command -v runuser >/dev/null; then
    check=(runuser -u "$NAME" -- "${check[@]}")
fi

if [ "$DRY_RUN" = 1 ]; then
    run "${check[@]}"
    note "if check-config succeeds:"
    run systemctl enable --now "$NAME.service"
    note "and if the service was already running (an upgrade):"
    run systemctl try-restart "$NAME.service"
    note "otherwise: print what to edit in $CONFIG"
    exit 0
fi

if output=$("${check[@]}" 2>&1); then
    say "$CONFIG is valid"
    if ! systemd_running; then
        say "systemd is not running here: start the service with 'systemctl enable --now $NAME' once it is"
        exit 0
    fi
    run systemctl enable --now "$NAME.service"
    if [ "$WAS_ACTIVE" = 1 ]; then
        # enable --now leaves a running service alone; pick up the new code.
        run systemctl try-restart "$NAME.service"
    fi
    say "hss-pu is running: systemctl status $NAME; journalctl -u $NAME -f"
    exit 0
fi

say "$CONFIG does not pass check-config:"
printf '%s\n' "$output" | sed 's/^/    /' >&2
say "edit it (sudoedit $CONFIG), check it with"
say "    sudo -u $NAME $OPT/current/venv/bin/hss-pu check-config $CONFIG"
say "then start the service with"
say "    sudo systemctl enable --now $NAME"
if [ "$FRESH_CONFIG" = 1 ]; then
    # Expected on a first install: the example has no platform or credentials.
    exit 0
fi
if [ "$WAS_ACTIVE" = 1 ]; then
    say "the running service was not restarted; it runs the previous code until it is"
fi
exit 1
