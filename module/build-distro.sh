#!/usr/bin/env bash
# Build ngx_http_upstreamtop_module for the distro's nginx (Debian nginx-dev).
#
# A dynamic module only loads into the nginx it was built against (same
# version and same "binary compatibility" signature), so the bindings must
# come from that nginx's own configured source tree, not from the vendored
# 1.28 the tests use:
#   1. copy the nginx-dev source (default /usr/share/nginx/src) to
#      <target>/nginx-distro/src (the package tree stays read-only),
#   2. ./configure it with the package's own flags (its `conf_flags` file),
#   3. cargo build --release --no-default-features (no vendored nginx) with
#      NGINX_BUILD_DIR=<copy>/objs and CARGO_TARGET_DIR=<target>/distro, so the
#      vendored build in <target>/{debug,release} is left alone,
#   4. copy the result to <target>/distro/ngx_http_upstreamtop_module.so.
#
# Usage: module/build-distro.sh
# Env:   NGINX_DEV_SRC  nginx-dev source tree (default /usr/share/nginx/src)
#        CARGO_TARGET_DIR  workspace target dir (default <repo>/target)
# Prints the path of the built .so as its last line. Exit status != 0 on failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
src="${NGINX_DEV_SRC:-/usr/share/nginx/src}"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac

die() { echo "build-distro: $*" >&2; exit 1; }

[ -f "$src/configure" ] && [ -f "$src/conf_flags" ] ||
    die "$src has no configure/conf_flags: install the Debian package nginx-dev (apt-get install -y nginx-dev)"

copy="$target/nginx-distro/src"
flags_file="$src/conf_flags"

# Re-configure only when the source or its flags changed since the last run.
stamp="$copy/.upstreamtop-configured"
want="$(cat "$flags_file"; stat -c '%Y' "$src/configure")"
if [ ! -f "$copy/objs/ngx_auto_config.h" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "build-distro: configuring a copy of $src in $copy" >&2
    rm -rf "$copy"
    mkdir -p "$copy"
    cp -a "$src/." "$copy/"
    # conf_flags is a bash array assignment: NGX_CONF_FLAGS=( ... )
    NGX_CONF_FLAGS=()
    # shellcheck disable=SC1090
    . "$flags_file"
    [ "${#NGX_CONF_FLAGS[@]}" -gt 0 ] || die "$flags_file did not set NGX_CONF_FLAGS"
    (cd "$copy" && ./configure "${NGX_CONF_FLAGS[@]}" >"$copy/configure.log" 2>&1) ||
        die "./configure failed, see $copy/configure.log"
    printf '%s' "$want" >"$stamp"
fi

echo "build-distro: building the module against $copy/objs" >&2
(cd "$root" &&
    NGINX_BUILD_DIR="$copy/objs" CARGO_TARGET_DIR="$target/distro" \
        cargo build --release --no-default-features -p ngx_http_upstreamtop_module >&2)

so="$target/distro/release/libngx_http_upstreamtop_module.so"
[ -f "$so" ] || die "cargo did not produce $so"
cp "$so" "$target/distro/ngx_http_upstreamtop_module.so"
echo "$target/distro/ngx_http_upstreamtop_module.so"
