#!/bin/sh
# Tests the built package on this machine for real: lintian, contents, install (user,
# directories, unit), the service's command run as the mqd user on loopback, local
# `mqctl` with no flags, remove (data kept), reinstall (data still there), purge (data
# gone). Needs root and dpkg; run it only on a throwaway machine such as CI's. It refuses
# to touch an existing mqd installation.
set -eu
cd "$(dirname "$0")/.."

deb=$(ls target/debian/mqd_*_amd64.deb | tail -n 1)
say() { printf 'test-deb: %s\n' "$*"; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root"
if dpkg -s mqd >/dev/null 2>&1 || [ -e /var/lib/mqd ]; then
    fail "mqd is installed or /var/lib/mqd exists on this machine; not touching it"
fi

pid=""
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    dpkg -P mqd >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "lintian"
lintian --fail-on error "$deb"

say "contents"
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/mqd ./usr/bin/mqctl ./usr/lib/systemd/system/mqd.service ./etc/mqd/mqd.toml \
         ./usr/share/man/man1/mqctl.1.gz ./usr/share/man/man8/mqd.8.gz ./usr/share/man/man5/mqd.toml.5.gz \
         ./usr/share/bash-completion/completions/mqctl ./usr/share/zsh/vendor-completions/_mqctl \
         ./usr/share/fish/vendor_completions.d/mqctl.fish ./usr/share/doc/mqd/copyright \
         ./usr/share/doc/mqd/changelog.Debian.gz; do
    printf '%s\n' "$contents" | grep -q " $f\$" || fail "package lacks $f"
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/mqd/mqd.toml || fail "mqd.toml is not a conffile"

start_node() {
    rm -f /var/lib/mqd/mqd.addr
    # What the unit runs, as the unit's user; on loopback with any free port.
    MQD_LISTEN=127.0.0.1:0 setpriv --reuid=mqd --regid=mqd --init-groups \
        /usr/bin/mqd --config /etc/mqd/mqd.toml \
        > /tmp/test-deb-mqd.log 2>&1 &
    pid=$!
    i=0
    until [ -s /var/lib/mqd/mqd.addr ]; do
        i=$((i + 1))
        [ $i -lt 200 ] || { cat /tmp/test-deb-mqd.log; fail "mqd did not start"; }
        sleep 0.1
    done
}
stop_node() {
    kill -TERM "$pid"
    wait "$pid" || fail "mqd did not exit 0 on SIGTERM"
    pid=""
}

say "install"
dpkg -i "$deb" >/dev/null
getent passwd mqd >/dev/null || fail "no mqd user"
[ "$(stat -c %U:%G:%a /var/lib/mqd)" = "mqd:mqd:750" ] || fail "/var/lib/mqd: $(stat -c %U:%G:%a /var/lib/mqd)"
systemd-analyze verify /usr/lib/systemd/system/mqd.service || fail "systemd-analyze verify"
if command -v man >/dev/null 2>&1; then
    page=$(MANWIDTH=100 man mqctl 2>/dev/null)
    for sub in "mqctl queue create" "mqctl queue redrive" "mqctl send" "mqctl receive" "mqctl ack" "mqctl bench"; do
        printf '%s\n' "$page" | grep -q "$sub" || fail "man mqctl does not render $sub"
    done
    MANWIDTH=100 man 8 mqd 2>/dev/null | grep -q "check-config" || fail "man 8 mqd"
    MANWIDTH=100 man 5 mqd.toml 2>/dev/null | grep -q "log_level" || fail "man 5 mqd.toml"
else
    say "(man is not installed; rendered pages not checked)"
fi

say "run as the mqd user; mqctl as root with no flags"
start_node
[ "$(stat -c %U:%G:%a /var/lib/mqd/admin.token)" = "mqd:mqd:640" ] || fail "admin.token: $(stat -c %U:%G:%a /var/lib/mqd/admin.token)"
mqctl queue create pkgtest >/dev/null
mqctl send pkgtest "kept across reinstall" >/dev/null
mqctl queue list --output json | grep -q '"queue":"pkgtest"' || fail "queue list"
stop_node

say "remove keeps data and config"
dpkg -r mqd >/dev/null
[ -e /var/lib/mqd/shard-0000.redb ] || fail "remove deleted the data"
[ -e /etc/mqd/mqd.toml ] || fail "remove deleted the conffile"

say "reinstall (upgrade path) keeps the queue and its message"
dpkg -i "$deb" >/dev/null
start_node
mqctl receive pkgtest --output json | grep -q "kept across reinstall" || fail "message lost across reinstall"
stop_node

say "purge deletes data and config"
dpkg -P mqd >/dev/null
[ ! -e /var/lib/mqd ] || fail "purge left /var/lib/mqd"
[ ! -e /etc/mqd/mqd.toml ] || fail "purge left /etc/mqd/mqd.toml"
trap - EXIT
say "passed"
