# shellcheck shell=bash
# Shared install logic for tools/test and tools/demo: source it, then call shadowfs_setup.
#
# shadowfs_setup installs what a fresh Debian 12 (as root) lacks, creates .venv if
# missing, builds pyfuse3 with our patches into it unless that build is there, and
# reinstalls the package only when pyproject.toml changed since the last install (a stamp
# file in .venv). When everything is present it costs well under a second.

SHADOWFS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHADOWFS_VENV="$SHADOWFS_ROOT/.venv"
SHADOWFS_APT_PACKAGES=(fuse3 libfuse3-dev pkg-config python3-dev python3-venv gcc patch rsync attr acl
                       xfsprogs btrfs-progs)
# What only the tests run (`shadowfs_setup test`): the backup tools and servers the end-to-end
# tests drive for real. Debian starts the Samba service when it installs it (where systemd runs).
# postgresql (the server of the Debian release: 15 on 12, 17 on 13, with initdb, pg_ctl and
# pgbench) and postgresql-contrib pull in postgresql-client-<version> (psql, pg_amcheck) and the
# `postgres` user; tests/e2e/test_postgresql.py finds them with pg_config or in
# /usr/lib/postgresql/*/bin and starts its own servers (Debian may start a cluster of its own).
SHADOWFS_TEST_APT_PACKAGES=(restic borgbackup samba samba-vfs-modules smbclient postgresql postgresql-contrib)

shadowfs_log() { echo "shadowfs setup: $*" >&2; }

shadowfs_missing_packages() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            echo "$pkg"
        fi
    done
}

shadowfs_ensure_packages() {
    command -v dpkg-query >/dev/null || { shadowfs_log "not a Debian system; install by hand: $*"; return 0; }
    local missing
    mapfile -t missing < <(shadowfs_missing_packages "$@")
    ((${#missing[@]} == 0)) && return 0
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || { shadowfs_log "missing packages ${missing[*]} and not root"; return 1; }
        sudo=(sudo)
    fi
    shadowfs_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
}

# The editable install is a plain path entry (compat mode), not an import hook: the hook
# costs every Python start of the CLI and the daemon's children about 15 ms.
SHADOWFS_EDITABLE_MODE=compat

shadowfs_stamp() {
    echo "$(sha256sum "$SHADOWFS_ROOT/pyproject.toml" | cut -d' ' -f1) $SHADOWFS_EDITABLE_MODE"
}

# pyfuse3 with the handoff patch (patches/pyfuse3/README.md): the sdist of the version
# pyproject.toml pins, from PyPI through pip, checked against the sha256 kept beside the
# patches, patched, and installed as <version>+shadowfs<hash of the patches>. A changed patch
# is thus built again, and an installed build is found by its dist-info directory alone.
SHADOWFS_PYFUSE3_VERSION=3.5.0
SHADOWFS_PYFUSE3_PATCHES="$SHADOWFS_ROOT/patches/pyfuse3"

shadowfs_pyfuse3_build() {
    echo "$SHADOWFS_PYFUSE3_VERSION+shadowfs$(cat "$SHADOWFS_PYFUSE3_PATCHES"/*.patch | sha256sum | cut -c1-12)"
}

shadowfs_ensure_pyfuse3() {
    local build
    build="$(shadowfs_pyfuse3_build)"
    compgen -G "$SHADOWFS_VENV/lib/python3*/site-packages/pyfuse3-$build.dist-info" >/dev/null && return 0
    shadowfs_log "building pyfuse3 $build (pyfuse3 $SHADOWFS_PYFUSE3_VERSION and patches/pyfuse3) into $SHADOWFS_VENV"
    local work status=0
    work="$(mktemp -d)"
    (
        set -euo pipefail
        cd "$work"
        "$SHADOWFS_VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
            --no-binary pyfuse3 -d . "pyfuse3==$SHADOWFS_PYFUSE3_VERSION" </dev/null
        sha256sum --check --quiet "$SHADOWFS_PYFUSE3_PATCHES/pyfuse3-$SHADOWFS_PYFUSE3_VERSION.tar.gz.sha256"
        tar -xzf "pyfuse3-$SHADOWFS_PYFUSE3_VERSION.tar.gz" --no-same-owner
        local source="pyfuse3-$SHADOWFS_PYFUSE3_VERSION" patch
        for patch in "$SHADOWFS_PYFUSE3_PATCHES"/*.patch; do
            patch --quiet --forward -p1 -d "$source" <"$patch"
        done
        rm -f "$source/src/pyfuse3/__init__.c"  # generated from the unpatched .pyx: Cython makes it again
        SETUPTOOLS_SCM_PRETEND_VERSION="$build" "$SHADOWFS_VENV/bin/python" -m pip install -q \
            --disable-pip-version-check "./$source" </dev/null
    ) || status=$?
    rm -rf "$work"
    ((status == 0)) || shadowfs_log "building pyfuse3 $build failed"
    return "$status"
}

shadowfs_ensure_venv() {
    if [[ ! -x "$SHADOWFS_VENV/bin/python" ]]; then
        shadowfs_log "creating $SHADOWFS_VENV"
        python3 -m venv "$SHADOWFS_VENV"
    fi
    shadowfs_ensure_pyfuse3
    local stamp_file="$SHADOWFS_VENV/.shadowfs-install-stamp" want
    want="$(shadowfs_stamp)"
    if [[ ! -f "$stamp_file" || "$(cat "$stamp_file")" != "$want" ]] \
        || ! "$SHADOWFS_VENV/bin/python" -c "import shadowfs, pyfuse3, trio, lmdb, pytest" 2>/dev/null; then
        shadowfs_log "installing shadowfs and its test tools into $SHADOWFS_VENV"
        "$SHADOWFS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            --config-settings editable_mode="$SHADOWFS_EDITABLE_MODE" -e "$SHADOWFS_ROOT[test]" </dev/null
        echo "$want" >"$stamp_file"
    fi
}

# Compiled modules for the daemon, its children and the CLI, which start often: where
# PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile every shadowfs module from
# source at each start (0.14 s of a CLI call). Quick when they are up to date.
shadowfs_ensure_bytecode() {
    "$SHADOWFS_VENV/bin/python" -m compileall -q "$SHADOWFS_ROOT/shadowfs" >/dev/null
}

# shadowfs_setup [test]: with "test", also what the tests need (SHADOWFS_TEST_APT_PACKAGES).
shadowfs_setup() {
    local packages=("${SHADOWFS_APT_PACKAGES[@]}")
    [[ "${1:-}" == test ]] && packages+=("${SHADOWFS_TEST_APT_PACKAGES[@]}")
    shadowfs_ensure_packages "${packages[@]}"
    shadowfs_ensure_venv
    shadowfs_ensure_bytecode
}
