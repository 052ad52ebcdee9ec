#!/bin/sh
# Install the movement-edge kiosk daemon on Raspberry Pi OS / Ubuntu, or into a folder tree (--root)
# so CI can check the result without touching the machine. Run `install.sh --help` for the details.
#
# Idempotent: every file is compared before it is written, so a second run changes nothing; the
# service is restarted only when something it runs (application, unit, config, keys) changed.
set -eu

APP_USER=movement-edge
UNIT=movement-edge.service

usage() {
    cat <<'EOF'
Usage: install.sh [--config FILE] [--credential NAME=FILE ...] [--force] [--with-mosquitto]
                  [--no-venv] [--python PY] [--root DIR]

Installs the kiosk daemon from this repository checkout:
  user     system user movement-edge (own group, member of video), no login, no home
  /opt/movement-edge            the device, trainer and provisioning packages, pyproject,
                                requirements, README; the virtualenv in venv/
  /etc/movement-edge            device.toml (mode 0640), the trusted *.pub keys beside it, the
                                TLS certificate tls.crt and its key tls.key (mode 0600, owned by
                                the service user)
  /etc/movement-edge/credentials  secrets the unit passes in with LoadCredential= (root, 0700)
  /var/lib/movement-edge        state: outbox database, model store (owned by the service user)
  /var/cache/movement-edge      the pose model built at first start
  /etc/systemd/system/movement-edge.service, enabled and started when systemd runs and a
  device.toml is installed; restarted when an upgrade changed what it runs.
  packages  python3-venv where the image lacks it; python3-picamera2 when device.toml's source is
            picamera2 (the venv sees Debian's dist-packages after its own, so its numpy wins)

Options:
  --config FILE     device.toml to install (from `python -m provisioning init-device`), with every
                    *.pub key, tls.crt and tls.key in its folder; an existing different one is
                    kept unless --force
  --credential NAME=FILE
                    a secret for the daemon, installed root-only as a systemd credential; NAME is
                    mqtt_password, http_token or http_viewer_token (repeatable)
  --force           replace an existing, different device.toml, key, certificate or credential
  --with-mosquitto  also install a local MQTT broker (apt-get install mosquitto)
  --no-venv         skip the virtualenv and pip (tests, or a venv managed otherwise)
  --python PY       interpreter for the virtualenv (default python3.11, else python3; must be 3.11)
  --root DIR        install into DIR as if it were /: no useradd, chown, apt-get or systemctl, which
                    are written to DIR/install.log instead; needs no root privileges
  -h, --help        this help

Examples:
  sudo provisioning/install.sh --config kiosks/kiosk-1/device.toml --with-mosquitto
  sudo provisioning/install.sh --credential mqtt_password=/root/broker-password
  sudo provisioning/install.sh                       # upgrade the application, keep the config
  provisioning/install.sh --root /tmp/tree --no-venv --config kiosks/kiosk-1/device.toml
EOF
}

say() { printf 'install: %s\n' "$*"; }
die() {
    printf 'install: error: %s\n' "$1" >&2
    exit "${2:-1}"
}

ROOT=""
CONFIG=""
CREDENTIALS="" # NAME=FILE pairs, one a line
FORCE=0
VENV=1
MOSQUITTO=0
PYTHON=""
while [ $# -gt 0 ]; do
    case "$1" in
    --root | --config | --python)
        [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)" 2
        case "$1" in
        --root) ROOT=$2 ;;
        --config) CONFIG=$2 ;;
        --python) PYTHON=$2 ;;
        esac
        shift 2
        ;;
    --credential)
        [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs NAME=FILE (see --help)" 2
        case "${2%%=*}" in
        mqtt_password | http_token | http_viewer_token) ;;
        *) die "--credential $2: NAME must be mqtt_password, http_token or http_viewer_token" 2 ;;
        esac
        case "$2" in *=?*) ;; *) die "--credential $2: expected NAME=FILE" 2 ;; esac
        [ -f "${2#*=}" ] || die "--credential $2: no such file ${2#*=}" 2
        CREDENTIALS="$CREDENTIALS$2
"
        shift 2
        ;;
    --force) FORCE=1 && shift ;;
    --no-venv) VENV=0 && shift ;;
    --with-mosquitto) MOSQUITTO=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown option $1 (see --help)" 2 ;;
    esac
done

umask 022
SRC=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$SRC/device/__main__.py" ] && [ -f "$SRC/pyproject.toml" ] || die "$SRC is not a movement-edge checkout"
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    LOG=$ROOT/install.log
    : >"$LOG" # what this run would do to the machine; rewritten each run
elif [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or give --root DIR to install into a folder" 2
fi
if [ -n "$CONFIG" ]; then
    [ -f "$CONFIG" ] || die "--config $CONFIG: no such file" 2
    CONFIG_DIR=$(cd "$(dirname "$CONFIG")" && pwd)
fi

APP=$ROOT/opt/movement-edge
ETC=$ROOT/etc/movement-edge
STATE=$ROOT/var/lib/movement-edge
CACHE=$ROOT/var/cache/movement-edge
UNIT_DIR=$ROOT/etc/systemd/system
CREDENTIALS_DIR=$ETC/credentials # the unit's LoadCredential= paths
KIOSK_FILES="tls.crt tls.key"     # beside device.toml, from init-device
CHANGED=0 # set when anything the service runs was written

# Changes to the machine outside the tree: done, or under --root recorded as a shell command.
machine() {
    if [ -z "$ROOT" ]; then
        "$@"
        return
    fi
    line=""
    for arg; do
        case $arg in
        *[!A-Za-z0-9_./:=+-]*) arg="'$(printf '%s' "$arg" | sed "s/'/'\\\\''/g")'" ;;
        esac
        line="$line${line:+ }$arg"
    done
    printf '%s\n' "$line" >>"$LOG"
}

# install_file MODE SOURCE TARGET: write TARGET (owned by root) only when its content differs.
install_file() {
    if ! cmp -s "$2" "$3"; then
        cp "$2" "$3.partial"
        chmod "$1" "$3.partial"
        mv -f "$3.partial" "$3"
        CHANGED=1
    fi
    chmod "$1" "$3"
}

# install_dir MODE DIR [OWNER:GROUP]: a root-owned folder unless an owner is given.
install_dir() {
    mkdir -p "$2"
    chmod "$1" "$2"
    if [ $# -gt 2 ]; then machine chown "$3" "${2#"$ROOT"}"; fi
}

# sync_tree SOURCE_DIR TARGET_DIR: the source's files (no bytecode), and nothing else, in TARGET.
sync_tree() {
    list=$(mktemp)
    (cd "$1" && find . -name __pycache__ -prune -o -type f ! -name '*.pyc' -print | sort) >"$list"
    while IFS= read -r file; do
        mkdir -p "$(dirname "$2/$file")"
        mode=0644
        [ -x "$1/$file" ] && mode=0755
        install_file "$mode" "$1/$file" "$2/$file"
    done <"$list"
    (cd "$2" && find . -name __pycache__ -prune -o -type f -print | sort) >"$list.installed"
    while IFS= read -r file; do
        if ! grep -qxF "$file" "$list"; then
            rm -f "$2/$file"
            CHANGED=1
        fi
    done <"$list.installed"
    find "$2" -depth -type d -empty -delete
    rm -f "$list" "$list.installed"
}

# Refuse before changing anything: a different config or key is replaced only with --force.
check_replace() {
    if [ -f "$2" ] && ! cmp -s "$1" "$2" && [ "$FORCE" -eq 0 ]; then
        die "${2#"$ROOT"} exists and differs from $1; give --force to replace it" 2
    fi
}
if [ -n "$CONFIG" ]; then
    check_replace "$CONFIG" "$ETC/device.toml"
    for key in "$CONFIG_DIR"/*.pub; do
        if [ -f "$key" ]; then check_replace "$key" "$ETC/$(basename "$key")"; fi
    done
    for name in $KIOSK_FILES; do
        if [ -f "$CONFIG_DIR/$name" ]; then check_replace "$CONFIG_DIR/$name" "$ETC/$name"; fi
    done
fi
while IFS= read -r pair; do # a here-document, not a pipe: no subshell, so die and CHANGED work
    if [ -n "$pair" ]; then check_replace "${pair#*=}" "$CREDENTIALS_DIR/${pair%%=*}"; fi
done <<EOF
$CREDENTIALS
EOF

say "service user $APP_USER (groups: $APP_USER, video)"
if [ -z "$ROOT" ] && ! getent group video >/dev/null; then
    groupadd --system video
fi
if [ -n "$ROOT" ] || ! getent passwd "$APP_USER" >/dev/null; then
    group_option=--user-group
    [ -z "$ROOT" ] && getent group "$APP_USER" >/dev/null && group_option="--gid $APP_USER"
    # shellcheck disable=SC2086 # group_option is two words when the group exists
    machine useradd --system $group_option --groups video --home-dir /var/lib/movement-edge \
        --no-create-home --shell /usr/sbin/nologin --comment "movement-edge kiosk daemon" "$APP_USER"
elif ! id -nG "$APP_USER" | tr ' ' '\n' | grep -qx video; then
    usermod --append --groups video "$APP_USER"
fi

say "application in ${APP#"$ROOT"}"
install_dir 0755 "$APP"
for package in device trainer provisioning requirements; do
    install_dir 0755 "$APP/$package"
    sync_tree "$SRC/$package" "$APP/$package"
done
for file in pyproject.toml README.md; do
    install_file 0644 "$SRC/$file" "$APP/$file"
done

if [ "$VENV" -eq 1 ]; then
    MEDIAPIPE=$(sed -n 's/^MEDIAPIPE := *//p' "$SRC/Makefile") # the one pin, shared with `make`
    [ -n "$MEDIAPIPE" ] || die "no MEDIAPIPE pin in $SRC/Makefile"
    if [ -z "$PYTHON" ]; then
        PYTHON=$(command -v python3.11 || command -v python3) || die "no python3 found; give --python" 2
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
        die "$PYTHON is not Python 3.11 (pyproject.toml: >=3.11,<3.12); give --python" 2
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        # Minimal images (Raspberry Pi OS Lite, Debian's netinst) ship Python without venv.
        say "python3-venv (the virtualenv needs it)"
        machine env DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends python3-venv
    fi
    say "virtualenv in ${APP#"$ROOT"}/venv ($("$PYTHON" --version))"
    [ -x "$APP/venv/bin/python" ] || "$PYTHON" -m venv "$APP/venv"
    "$APP/venv/bin/python" -m pip install --quiet --requirement "$APP/requirements/device.txt"
    # mediapipe's declared dependencies would add a second OpenCV build and jax (README, Dependencies)
    "$APP/venv/bin/python" -m pip install --quiet --no-deps "$MEDIAPIPE"
    "$APP/venv/bin/python" -m pip install --quiet --no-deps "$APP"
else
    say "virtualenv skipped (--no-venv)"
fi

say "configuration in ${ETC#"$ROOT"}"
install_dir 0750 "$ETC" "root:$APP_USER"
if [ -n "$CONFIG" ]; then
    install_file 0640 "$CONFIG" "$ETC/device.toml"
    machine chgrp "$APP_USER" "${ETC#"$ROOT"}/device.toml" # readable by the service, nobody else
    for key in "$CONFIG_DIR"/*.pub; do
        if [ -f "$key" ]; then install_file 0644 "$key" "$ETC/$(basename "$key")"; fi
    done
    if [ -f "$CONFIG_DIR/tls.crt" ]; then install_file 0644 "$CONFIG_DIR/tls.crt" "$ETC/tls.crt"; fi
    if [ -f "$CONFIG_DIR/tls.key" ]; then
        install_file 0600 "$CONFIG_DIR/tls.key" "$ETC/tls.key"
        machine chown "$APP_USER:$APP_USER" "${ETC#"$ROOT"}/tls.key" # the daemon reads it, nobody else
    fi
fi
install_dir 0700 "$CREDENTIALS_DIR"
while IFS= read -r pair; do
    if [ -n "$pair" ]; then
        install_file 0600 "${pair#*=}" "$CREDENTIALS_DIR/${pair%%=*}"
        say "credential ${pair%%=*} in ${CREDENTIALS_DIR#"$ROOT"}"
    fi
done <<EOF
$CREDENTIALS
EOF
if [ -f "$ETC/secrets.env" ]; then
    printf 'install: warning: %s is no longer read: the unit takes secrets as credentials; put each in a file and rerun with --credential NAME=FILE (see --help), then delete it\n' \
        "${ETC#"$ROOT"}/secrets.env" >&2
fi
if [ -f "$ETC/device.toml" ] && [ "$VENV" -eq 1 ]; then
    # --offline: keys and values only; the camera, state folder and bundle may not be there yet
    "$APP/venv/bin/python" -m device check-config --offline "$ETC/device.toml" >/dev/null ||
        die "${ETC#"$ROOT"}/device.toml is not valid (the message above says why)"
fi

# The Raspberry Pi camera library is packaged for apt only (python3-picamera2, with libcamera's
# bindings), into Debian's dist-packages, which a virtualenv does not see. A .pth file in the
# venv names that folder: Python appends it after the venv's own site-packages, so the venv's
# pinned numpy and OpenCV still win over Debian's.
if [ -f "$ETC/device.toml" ] && grep -Eq '^[[:space:]]*kind[[:space:]]*=[[:space:]]*"picamera2"' "$ETC/device.toml"; then
    say "Raspberry Pi camera library (python3-picamera2) for the picamera2 source"
    if [ -n "$ROOT" ] || ! dpkg-query -W -f '${Status}' python3-picamera2 2>/dev/null | grep -q 'ok installed'; then
        machine env DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends python3-picamera2
    fi
    SITE=$APP/venv/lib/python3.11/site-packages
    if [ -d "$SITE" ]; then
        pth=$(mktemp)
        printf '%s\n' "$ROOT/usr/lib/python3/dist-packages" >"$pth"
        install_file 0644 "$pth" "$SITE/debian-dist-packages.pth"
        rm -f "$pth"
    fi
fi

say "state in ${STATE#"$ROOT"}, cache in ${CACHE#"$ROOT"}"
install_dir 0750 "$STATE" "$APP_USER:$APP_USER"
install_dir 0750 "$CACHE" "$APP_USER:$APP_USER"

say "systemd unit ${UNIT_DIR#"$ROOT"}/$UNIT"
install_dir 0755 "$UNIT_DIR"
install_file 0644 "$SRC/systemd/$UNIT" "$UNIT_DIR/$UNIT"

if [ "$MOSQUITTO" -eq 1 ]; then
    say "local MQTT broker (mosquitto)"
    if [ -n "$ROOT" ] || ! dpkg-query -W -f '${Status}' mosquitto 2>/dev/null | grep -q 'ok installed'; then
        machine env DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends mosquitto
    fi
fi

if [ -n "$ROOT" ]; then
    say "installed into $ROOT; what would change on a machine is in $LOG"
elif [ ! -d /run/systemd/system ]; then
    say "systemd is not running: start the daemon with systemctl enable --now $UNIT once it is"
elif [ ! -f "$ETC/device.toml" ]; then
    systemctl daemon-reload
    systemctl enable "$UNIT"
    say "no $ETC/device.toml yet: write one with python -m provisioning init-device, rerun with --config"
else
    was_active=$(systemctl is-active "$UNIT" || true)
    systemctl daemon-reload
    systemctl enable --now "$UNIT"
    if [ "$was_active" = active ] && [ "$CHANGED" -eq 1 ]; then
        systemctl restart "$UNIT"
    fi
    say "$(systemctl is-active "$UNIT" || true): systemctl status $UNIT; journalctl -u $UNIT"
fi
