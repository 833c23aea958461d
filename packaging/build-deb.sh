#!/bin/sh
# Builds target/debian/mqd_<version>-1_amd64.deb from this checkout.
# Needs cargo-deb (installed here if missing) and gzip.
set -eu
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo build --release --locked --workspace --bins

mkdir -p target/man target/completions target/deb-bin
# Debian ships stripped binaries; the unstripped ones stay in target/release.
for bin in mqd mqctl; do
    strip --strip-unneeded --remove-section=.comment --remove-section=.note \
        -o "target/deb-bin/$bin" "target/release/$bin"
done
for page in man/mqd.8 man/mqd.toml.5 man/mqctl.1; do
    gzip -9n -c "$page" > "target/man/$(basename "$page").gz"
done
target/release/mqctl completions bash > target/completions/mqctl
target/release/mqctl completions zsh > target/completions/_mqctl
target/release/mqctl completions fish > target/completions/mqctl.fish

cargo deb --no-build --locked -p mqd
ls target/debian/mqd_*.deb
