#!/bin/sh
# Build Debian's Tcl 8.6 for memory checking: -DPURIFY makes Tcl allocate every
# block (and every Tcl_Obj) with malloc instead of its own pools, so
# AddressSanitizer sees each use after free.  Usage: purify_tcl.sh DIR
# Installs DIR/inst/bin/tclsh8.6 and prints its path; a second run reuses it.
# The source comes from Debian's archive through apt (`apt-get source`), with a
# deb-src entry in a private apt directory under DIR: the system's apt
# configuration is not touched.  Needs dpkg-dev and a compiler with ASan.
set -eu
dir=$(mkdir -p "$1" && cd "$1" && pwd)
tclsh=$dir/inst/bin/tclsh8.6
if [ -x "$tclsh" ]; then
    echo "$tclsh"
    exit 0
fi
apt=$dir/apt
mkdir -p "$apt/lists/partial" "$apt/cache" "$apt/src"
cat >"$apt/sources.list" <<LIST
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
LIST
opts="-o Dir::Etc::SourceList=$apt/sources.list -o Dir::Etc::SourceParts=/nonexistent
      -o Dir::State::Lists=$apt/lists -o Dir::Cache=$apt/cache -o APT::Sandbox::User=root"
# shellcheck disable=SC2086
apt-get -qq $opts update >&2
# shellcheck disable=SC2086
(cd "$apt/src" && apt-get -qq $opts source tcl8.6 >&2)
src=$(find "$apt/src" -maxdepth 1 -type d -name 'tcl8.6-*' | head -n 1)
san="-fsanitize=address,undefined -fno-omit-frame-pointer"
(cd "$src/unix" \
    && ./configure -q --prefix="$dir/inst" --enable-threads --disable-shared \
        CFLAGS="-g -O1 -DPURIFY $san" LDFLAGS="$san" >&2 \
    && env -u MAKEFLAGS -u MAKELEVEL make -s -j2 >&2 \
    && env -u MAKEFLAGS -u MAKELEVEL make -s install >&2)
echo "$tclsh"
