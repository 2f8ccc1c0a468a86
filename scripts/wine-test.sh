#!/usr/bin/env bash
# Cross-compile walbundle and its portable tests (tests/windows.rs) for x86_64-pc-windows-gnu
# and run them under Wine: the Windows leg of .ci/run. Installs what it needs on a fresh
# Debian machine (root): the Rust target, mingw-w64 and Wine 8 (Debian packages).
#
#   scripts/wine-test.sh            build and run the tests
#   scripts/wine-test.sh --install  install the tools only
#
# Under Wine, walbundle.exe and the test program are real Windows executables on Wine's
# Win32 API (file sharing modes, byte-range locks, MoveFileExW, the Task Scheduler service);
# the one stand-in is bcryptprimitives.dll's ProcessPrng, which Wine 8.0 lacks and Rust's std
# needs (scripts/wine/processprng.c, put beside the test executables only).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-pc-windows-gnu

install() {
  local missing=()
  command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
  [ -x /usr/lib/wine/wine64 ] || missing+=(wine64)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
}

install
[ "${1:-}" = "--install" ] && exit 0

out="target/$TARGET/debug"
mkdir -p "$out/deps"
x86_64-w64-mingw32-gcc -O2 -shared -o "$out/bcryptprimitives.dll" scripts/wine/processprng.c -ladvapi32
cp "$out/bcryptprimitives.dll" "$out/deps/"

# A Wine prefix of our own, made once per target folder (about 15 s).
export WINEPREFIX="$PWD/target/wine-prefix" WINEDEBUG=-all
# Wine's server outlives its last program by a few seconds: end it with us.
trap '/usr/lib/wine/wineserver -k 2>/dev/null || true' EXIT
if [ ! -d "$WINEPREFIX" ]; then
  /usr/lib/wine/wine64 wineboot --init >/dev/null 2>&1 || true
  /usr/lib/wine/wineserver -w || true
fi
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=/usr/lib/wine/wine64
cargo clippy --target "$TARGET" --lib --bins --test windows -- -D warnings
cargo test --target "$TARGET" --test windows
