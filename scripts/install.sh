#!/usr/bin/env bash
# Installs hrl: the three binaries, example configs in /etc/hrl (never
# overwriting an existing one), systemd units; --uninstall removes exactly
# what an install put there (configs only when unchanged).
#
#   sudo scripts/install.sh [--prefix /usr/local] [--root DIR] [--bin-dir DIR]
#   sudo scripts/install.sh --uninstall [--prefix /usr/local] [--root DIR]
#
# --root DIR installs under DIR instead of / (packaging, tests).
# --bin-dir DIR takes built binaries from DIR instead of `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local root="" bindir="" uninstall=0
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --root) root=${2%/}; shift 2 ;;
    --bin-dir) bindir=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$root" ] || [ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (or give --root DIR)" >&2; exit 2; }

manifest="$root/etc/hrl/.installed"
units="$root/etc/systemd/system"
reload_systemd() {
    # Only on the live system, and only when systemd runs it.
    if [ -z "$root" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
}

if [ "$uninstall" = 1 ]; then
    [ -f "$manifest" ] || { echo "install.sh: nothing installed here ($manifest missing)" >&2; exit 1; }
    if [ -z "$root" ] && [ -d /run/systemd/system ]; then
        systemctl disable --now hrl-standby.service hrl-shipper.service hrl-agent.service 2>/dev/null || true
    fi
    kept=()
    while read -r sum path; do
        f="$root$path"
        [ -e "$f" ] || continue
        if [ "$sum" = "-" ] || [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$sum" ]; then
            rm -f "$f"
        else
            kept+=("$f")
        fi
    done <"$manifest"
    rm -f "$manifest"
    rmdir "$root/etc/hrl" "$root$prefix/share/doc/hrl" 2>/dev/null || true
    reload_systemd
    for f in "${kept[@]}"; do echo "kept $f (changed since install)"; done
    echo "hrl uninstalled"
    exit 0
fi

if [ -z "$bindir" ]; then
    cargo build --release --locked -q -p hrl-agent -p hrl-shipper -p hrl-format
    bindir=target/release
fi
for b in hrl-agent hrl-shipper hrl; do
    [ -x "$bindir/$b" ] || { echo "install.sh: $bindir/$b missing" >&2; exit 1; }
done

mkdir -p "$root$prefix/bin" "$root/etc/hrl" "$units" "$root$prefix/share/doc/hrl"
chmod 0755 "$root/etc/hrl"
: >"$manifest.new"
put() { # src dest mode
    install -m "$3" "$1" "$root$2"
    echo "$(sha256sum "$root$2" | cut -d' ' -f1) $2" >>"$manifest.new"
}
for b in hrl-agent hrl-shipper hrl; do put "$bindir/$b" "$prefix/bin/$b" 0755; done
for c in agent shipper; do
    if [ -e "$root/etc/hrl/$c.toml" ]; then
        echo "kept existing /etc/hrl/$c.toml"
        grep -q " /etc/hrl/$c.toml\$" "$manifest" 2>/dev/null && grep " /etc/hrl/$c.toml\$" "$manifest" >>"$manifest.new"
    else
        put "dist/etc/$c.toml" "/etc/hrl/$c.toml" 0644
    fi
done
spool=$(sed -n 's/^spool *= *"\(.*\)".*/\1/p' "$root/etc/hrl/agent.toml" | head -1)
for u in hrl-agent hrl-shipper hrl-standby; do
    sed -e "s#/usr/local/bin/#$prefix/bin/#g" -e "s#/usr/local/share/#$prefix/share/#g" \
        -e "s#^RequiresMountsFor=.*#RequiresMountsFor=${spool:-/var/spool/hrl}#" \
        "dist/systemd/$u.service" >"$units/$u.service"
    chmod 0644 "$units/$u.service"
    echo "$(sha256sum "$units/$u.service" | cut -d' ' -f1) /etc/systemd/system/$u.service" >>"$manifest.new"
done
put docs/operations.md "$prefix/share/doc/hrl/operations.md" 0644
mv "$manifest.new" "$manifest"
reload_systemd
cat <<MSG
hrl installed under ${root:-/}: $prefix/bin/{hrl-agent,hrl-shipper,hrl}, /etc/hrl/{agent,shipper}.toml, hrl-agent.service, hrl-shipper.service, hrl-standby.service (the standby into Azure: /etc/hrl/standby.env, see operations.md).
Next: add your disks to /etc/hrl/agent.toml, run
  hrl-shipper init --repo URL --key-file /etc/hrl/repo.key
then: systemctl enable --now hrl-agent hrl-shipper
MSG
