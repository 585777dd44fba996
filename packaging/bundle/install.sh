#!/bin/sh
# Install Confide from this offline bundle. Needs no network: every wheel is in wheelhouse/,
# and pip is told to use nothing else. Needs Debian 12's python3.11 and python3.11-venv
# (from the site's own Debian mirror or media).
#
# Usage: ./install.sh [--part agent|aggregator] [--prefix DIR] [--no-system]
#   --part       what to install: agent (default; torch CPU, Opacus, onnxruntime) or
#                aggregator (no torch; includes the operator CLI, confide)
#   --prefix     the virtual environment (default /opt/confide/PART)
#   --no-system  only the virtual environment: no user, folders, config, unit or links
#
# As root, without --no-system, it also creates the confide system user, /var/lib/confide/PART
# and /etc/confide/pki (owned by confide, 0700), copies the example config to
# /etc/confide/PART.toml unless one exists, installs the systemd unit (neither enabled nor
# started) and links the commands into /usr/local/bin. Running it again upgrades in place.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
version=$(cat "$here/VERSION")
part=agent
prefix=
system=1
python=${PYTHON:-/usr/bin/python3.11}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --part) [ $# -ge 2 ] || die "--part needs agent or aggregator"; part=$2; shift 2 ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; prefix=$2; shift 2 ;;
        --no-system) system=0; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$part" in
    agent) extras="[agent]"; commands="confide-agent" ;;
    aggregator) extras=""; commands="confide-aggregator confide" ;;
    *) die "--part must be agent or aggregator, not $part" ;;
esac
prefix=${prefix:-/opt/confide/$part}

[ -x "$python" ] || die "needs $python: apt-get install python3.11 python3.11-venv"
"$python" -c 'import ensurepip, venv' 2>/dev/null ||
    die "needs Python's venv module: apt-get install python3.11-venv"
if [ "$system" = 1 ] && [ "$(id -u)" != 0 ]; then
    die "run as root, or with --no-system for the virtual environment alone"
fi

echo "install.sh: checking the bundle's checksums"
(cd "$here" && sha256sum --quiet --strict -c SHA256SUMS) ||
    die "SHA256SUMS does not match: the bundle is damaged or was altered; get it again"

echo "install.sh: confide $version ($part) into $prefix"
"$python" -m venv "$prefix"
# Offline and deaf to this host's pip configuration: only the bundle's wheels, pinned.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent PIP_CONFIG_FILE=/dev/null \
    "$prefix/bin/python" -m pip install --quiet --no-index --no-cache-dir \
    --disable-pip-version-check --find-links "$here/wheelhouse" \
    -c "$here/constraints.txt" "confide$extras==$version"

if [ "$system" = 0 ]; then
    echo "install.sh: done; run $prefix/bin/${commands%% *} --version"
    exit 0
fi

getent group confide >/dev/null || groupadd --system confide
getent passwd confide >/dev/null ||
    useradd --system --gid confide --home-dir /var/lib/confide --no-create-home \
        --shell /usr/sbin/nologin --comment "Confide federated learning" confide
[ -d /var/lib/confide ] || install -d -m 0755 /var/lib/confide
install -d -m 0700 -o confide -g confide "/var/lib/confide/$part"
install -d -m 0755 /etc/confide
[ -d /etc/confide/pki ] || install -d -m 0700 -o confide -g confide /etc/confide/pki
if [ ! -e "/etc/confide/$part.toml" ]; then
    install -m 0644 "$here/examples/$part.toml" "/etc/confide/$part.toml"
fi
unit=/etc/systemd/system/confide-$part.service
install -d -m 0755 /etc/systemd/system
sed "s|/opt/confide/$part/bin/|$prefix/bin/|" "$here/systemd/confide-$part.service" > "$unit.tmp"
chmod 0644 "$unit.tmp" && mv "$unit.tmp" "$unit"
install -d -m 0755 /usr/local/bin
for cmd in $commands; do
    ln -sfn "$prefix/bin/$cmd" "/usr/local/bin/$cmd"
done
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

cat <<EOF
install.sh: done. Nothing is running yet. Next:
  edit /etc/confide/$part.toml and put the PKI files in /etc/confide/pki
  systemctl enable --now confide-$part
EOF
if [ "$part" = agent ]; then
    echo "  GPUs: cp $here/systemd/confide-agent-gpu.conf /etc/systemd/system/confide-agent.service.d/gpu.conf"
fi
