# shellcheck shell=bash
# Shared install logic for tools/test and tools/demo: source it, then call shadowfs_setup.
#
# shadowfs_setup installs what a fresh Debian 12 (as root) lacks, creates .venv if
# missing, and reinstalls the package only when pyproject.toml changed since the last
# install (a stamp file in .venv). When everything is present it costs well under a second.

SHADOWFS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHADOWFS_VENV="$SHADOWFS_ROOT/.venv"
SHADOWFS_APT_PACKAGES=(fuse3 libfuse3-dev pkg-config python3-dev python3-venv gcc rsync attr acl)

shadowfs_log() { echo "shadowfs setup: $*" >&2; }

shadowfs_missing_packages() {
    local pkg
    for pkg in "${SHADOWFS_APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            echo "$pkg"
        fi
    done
}

shadowfs_ensure_packages() {
    command -v dpkg-query >/dev/null || { shadowfs_log "not a Debian system; install by hand: ${SHADOWFS_APT_PACKAGES[*]}"; return 0; }
    local missing
    mapfile -t missing < <(shadowfs_missing_packages)
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

shadowfs_ensure_venv() {
    if [[ ! -x "$SHADOWFS_VENV/bin/python" ]]; then
        shadowfs_log "creating $SHADOWFS_VENV"
        python3 -m venv "$SHADOWFS_VENV"
    fi
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

shadowfs_setup() {
    shadowfs_ensure_packages
    shadowfs_ensure_venv
    shadowfs_ensure_bytecode
}
