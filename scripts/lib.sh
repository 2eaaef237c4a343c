# Shared helpers for hrl's scripts. Source it; do not run it.

step() { printf '\n== %s\n' "$*"; }

# Installs the Debian packages the tests and demo use, when missing.
install_test_deps() {
    local need=()
    command -v fio >/dev/null 2>&1 || need+=(fio)
    command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
    command -v mkfs.xfs >/dev/null 2>&1 || need+=(xfsprogs)
    command -v losetup >/dev/null 2>&1 || need+=(mount)
    if [ ${#need[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "missing ${need[*]}; run as root to install them" >&2
            return 0
        fi
        step "apt-get install ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}
