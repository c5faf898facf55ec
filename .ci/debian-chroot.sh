#!/usr/bin/env bash
# i.ann on another Debian's GRASS: a Debian system (trixie: Debian 13,
# GRASS 8.4; testing: GRASS 8.5 where it has reached testing) in a chroot,
# made once with debootstrap from the Debian archive and kept under
# ~/.cache between runs on the same machine, in which a clean copy of this
# checkout runs its own set-up (.ci/setup --dev: GRASS and Python from that
# Debian, the Python packages for its Python) and then the given tests,
# with GitHub unreachable (github.com resolves to nowhere inside).
#
# Usage (as root):
#   bash .ci/debian-chroot.sh SUITE --prepare
#       makes the system and sets it up, runs no test
#   bash .ci/debian-chroot.sh SUITE [pytest arguments] [--group pytest arguments]...
#       runs the tests: each --group starts another pytest side by side
#       (one a core), with a temporary folder and GRASS project of its own
#   e.g. bash .ci/debian-chroot.sh trixie testsuite/test_install.py
# The chroot gets the host's package sources for pip (its pip
# configuration and the local folders it names, read-only) and CA
# certificates, so that pip works inside as outside.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:?"Usage: bash .ci/debian-chroot.sh SUITE --prepare | [pytest arguments]"}
shift
root=${XDG_CACHE_HOME:-$HOME/.cache}/i.ann/debian-$suite
started=$SECONDS

mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l "${mounted[i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT
bind() {  # bind SOURCE [ro]: SOURCE at the same path inside the chroot
    mkdir -p "$root$1"
    mount --bind "$1" "$root$1"
    mounted+=("$root$1")
    if [ "${2:-}" = ro ]; then
        mount -o remount,bind,ro "$root$1"
    fi
}

if [ ! -f "$root/.debootstrap-done" ]; then
    command -v debootstrap >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    echo "== Making a Debian $suite system in $root (once)"
    rm -rf "$root"
    mkdir -p "$root"
    debootstrap --variant=minbase --include=ca-certificates,git,make "$suite" \
        "$root" http://deb.debian.org/debian >"$root.log" 2>&1 ||
        { tail -20 "$root.log"; exit 1; }
    touch "$root/.debootstrap-done"
fi

for path in /proc /sys /dev /dev/pts; do
    bind "$path"
done
cp /etc/resolv.conf "$root/etc/resolv.conf"
# pip as on the host: its configuration files, and the local folders
# and indexes they name.
for file in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" \
    "$HOME/.pip/pip.conf"; do
    if [ -f "$file" ]; then
        mkdir -p "$root$(dirname "$file")"
        cp "$file" "$root$file"
    fi
done
# (a local index .../simple links to files beside it: its parent is taken)
for path in $(pip config list 2>/dev/null | grep -oE "(file://)?/[^' ]+" |
    sed -e 's|^file://||' -e 's|/simple/*$||' | sort -u); do
    if [ -d "$path" ] && ! mountpoint -q "$root$path"; then
        bind "$path" ro
    elif [ -f "$path" ] && [ ! -e "$root$path" ]; then
        mkdir -p "$root$(dirname "$path")"
        cp "$path" "$root$path"
    fi
done
# pip's cache, shared: a wheel (ukis-csmask's 145 MB) is downloaded once
# per machine.
mkdir -p "$HOME/.cache/pip"
bind "$HOME/.cache/pip"
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/* "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
fi
# The archive reached here may be a dated copy: testing's Release file
# then has expired, which apt would refuse.
echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99i-ann"
# No GitHub inside: the install must not need it.
grep -q "github.com" "$root/etc/hosts" 2>/dev/null ||
    printf '0.0.0.0 github.com api.github.com codeload.github.com\n' >>"$root/etc/hosts"

# A clean copy of the checkout: what git tracks, and new files it does
# not ignore, as they are in the working tree.
rm -rf "$root/root/i.ann"
mkdir -p "$root/root/i.ann"
(cd "$repo" && git ls-files -co --exclude-standard -z |
    xargs -0 cp --parents -t "$root/root/i.ann")
if [ -d "$repo/../shared" ]; then
    rm -rf "$root/root/shared"
    cp -r "$repo/../shared" "$root/root/shared"
fi
echo "== Debian $suite ready: $((SECONDS - started)) s"

chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb $(env | grep -E '^PIP_' | tr '\n' ' ') \
    bash -c 'cd /root/i.ann && bash .ci/setup --dev' |
    sed -u "s/^/[$suite] /"
echo "== Debian $suite set up (GRASS $(chroot "$root" grass --version 2>/dev/null |
    head -1)): $((SECONDS - started)) s"
[ "${1:-}" = --prepare ] && exit 0

in_chroot() {  # in_chroot COMMAND [ARGS]: a bash command in the checkout inside
    local command=$1
    shift
    chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 TERM=dumb bash -c "cd /root/i.ann && source .ci/env.sh && $command" \
        bash "$@"
}
run_group() {  # run_group NAME [pytest arguments]
    local name=$1
    shift
    in_chroot 'name=$1 && shift && rm -rf "/tmp/iann-tests-$name" &&
        python3 -m pytest -p no:cacheprovider -o console_output_style=classic \
        -rfE --timeout=900 --durations=10 -v --basetemp="/tmp/iann-tests-$name" "$@"' \
        "$name" "$@" | sed -u "s/^/[$suite $name] /"
    return "${PIPESTATUS[0]}"
}
# Keras writes ~/.keras/keras.json on its first import: once, before the
# groups could both try.
in_chroot 'python3 -c "import keras"' >/dev/null 2>&1
names=(a b c d e f g h)
group=()
running=()
for arg in "$@" --group; do
    if [ "$arg" = --group ]; then
        run_group "${names[${#running[@]}]}" "${group[@]}" &
        running+=($!)
        group=()
    else
        group+=("$arg")
    fi
done
status=0
for pid in "${running[@]}"; do
    wait "$pid" || status=1
done
echo "== Debian $suite tests: $((SECONDS - started)) s"
exit "$status"
