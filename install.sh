#!/bin/sh
# Builds mqd and mqctl (release), installs them, then runs mqd in the foreground with the
# embedded defaults: single node, no config file needed.
#
#   ./install.sh            install into /usr/local/bin (root) or ~/.local/bin, then run mqd
#   ./install.sh --no-run   install only
#   PREFIX=/opt/mq ./install.sh
#
# Needs a Rust toolchain (cargo 1.85 or newer) and a C compiler (for the ring crate).
set -eu
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
    echo "install.sh: cargo not found; install a Rust toolchain (1.85+) first" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    PREFIX=${PREFIX:-/usr/local}
else
    PREFIX=${PREFIX:-$HOME/.local}
fi

cargo build --release --locked --workspace --bins
mkdir -p "$PREFIX/bin"
install -m 0755 target/release/mqd target/release/mqctl "$PREFIX/bin/"
echo "installed mqd and mqctl into $PREFIX/bin"

case "${1:-}" in
    --no-run) exit 0 ;;
esac
case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) echo "note: $PREFIX/bin is not on PATH; add it to run mqctl by name" >&2 ;;
esac
echo "starting mqd (Ctrl-C stops it); in another shell: mqctl queue list"
exec "$PREFIX/bin/mqd"
