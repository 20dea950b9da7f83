#!/usr/bin/env bash
# Build ngx_http_upstreamtop_module for an installed nginx binary.
#
# A dynamic module only loads into the nginx it was built for: the same
# version and the same "binary compatibility" signature, which the
# configure flags decide (`--with-compat` makes it independent of most of
# them). So the bindings come from a configured nginx source tree of that
# very version, configured like that binary:
#   1. read `NGINX -V`: its version and configure arguments;
#   2. pick a source tree of that version, offline, first match wins:
#        - Debian's nginx-dev (/usr/share/nginx/src) when the binary is
#          Debian's (same version, Debian's conf_flags among its arguments):
#          configured with those conf_flags, the flags Debian's own
#          libnginx-mod-* packages are built with;
#        - $NGINX_SRC, a source tree you unpacked (e.g. nginx-1.26.2.tar.gz
#          from nginx.org), when its version matches;
#        - the nginx-src crate that ngx's `vendored` feature downloads to
#          cargo's registry (nginx 1.28.3 for ngx 0.5), when it matches;
#        - nginx-dev's tree when only its version matches (a non-Debian build
#          of Debian's version);
#      and refuse, saying what to install, when none matches;
#   3. copy it under <target>/ (the source stays read-only) and ./configure
#      the copy with the binary's arguments (Debian's conf_flags for
#      Debian's nginx; third-party --add-module/--add-dynamic-module
#      arguments dropped: their sources are not here and they do not enter
#      the signature);
#   4. cargo build --release --no-default-features (no vendored nginx) with
#      NGINX_BUILD_DIR=<copy>/objs into its own CARGO_TARGET_DIR;
#   5. check the built module's signature equals the binary's, and copy it
#      to the output path.
#
# Usage: module/build-distro.sh [--nginx PATH] [--out PATH] [--dry-run]
#   --nginx  the nginx binary to build for (default /usr/sbin/nginx; with no
#            binary there, Debian's nginx-dev tree as it is)
#   --out    where to put the module (default, for Debian's nginx:
#            <target>/distro/ngx_http_upstreamtop_module.so; for another
#            nginx: <target>/nginx-<version>/ngx_http_upstreamtop_module.so)
#   --dry-run  print the version, the source tree, the configure arguments
#            and the output path it would use, one per line, and stop
# Env:   NGINX_DEV_SRC     nginx-dev source tree (default /usr/share/nginx/src)
#        NGINX_SRC         another nginx source tree to consider
#        CARGO_TARGET_DIR  workspace target dir (default <repo>/target)
# Prints the path of the built .so as its last line. Exit status != 0 on
# failure, with the reason on stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
dev_src="${NGINX_DEV_SRC:-/usr/share/nginx/src}"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac

die() { echo "build-distro: $*" >&2; exit 1; }
say() { echo "build-distro: $*" >&2; }

nginx_bin="" out=""
nginx_given=0 dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --nginx) nginx_bin="${2:?--nginx needs a path}"; nginx_given=1; shift 2 ;;
        --nginx=*) nginx_bin="${1#--nginx=}"; nginx_given=1; shift ;;
        --out) out="${2:?--out needs a path}"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ -n "$nginx_bin" ] || nginx_bin=/usr/sbin/nginx

# The version a source tree holds (src/core/nginx.h), or nothing.
tree_version() {
    sed -n 's/^#define NGINX_VERSION *"\(.*\)"$/\1/p' "$1/src/core/nginx.h" 2>/dev/null || true
}

# The nginx-src crate's tree in cargo's registry (the newest one there).
crate_src() {
    local home="${CARGO_HOME:-$HOME/.cargo}" d best=""
    for d in "$home"/registry/src/*/nginx-src-*/nginx; do
        [ -f "$d/src/core/nginx.h" ] && best="$d"
    done
    printf '%s' "$best"
}

# The binary: version and configure arguments, split as a shell would
# (xargs honours the quotes nginx -V prints, without evaluating anything).
bin_version="" bin_args=()
if [ -x "$nginx_bin" ]; then
    v_out="$("$nginx_bin" -V 2>&1)" || die "$nginx_bin -V failed: $v_out"
    bin_version="$(printf '%s\n' "$v_out" | sed -n 's|^nginx version: [^/]*/\([0-9.]*\).*|\1|p')"
    [ -n "$bin_version" ] || die "no version in \`$nginx_bin -V\`: $v_out"
    args_line="$(printf '%s\n' "$v_out" | sed -n 's/^configure arguments: //p')"
    if [ -n "$args_line" ]; then
        mapfile -d '' bin_args < <(printf '%s' "$args_line" | xargs printf '%s\0')
    fi
elif [ "$nginx_given" -eq 1 ]; then
    die "$nginx_bin is not an executable nginx"
fi

has_arg() {
    local a
    for a in "${bin_args[@]}"; do [ "$a" = "$1" ] && return 0; done
    return 1
}

# Debian's nginx: nginx-dev of the same version, and every one of
# Debian's conf_flags among the binary's arguments.
debian_flags=()
if [ -f "$dev_src/conf_flags" ] && [ -f "$dev_src/configure" ]; then
    NGX_CONF_FLAGS=()
    # conf_flags is a bash array assignment: NGX_CONF_FLAGS=( ... )
    # shellcheck disable=SC1091
    . "$dev_src/conf_flags"
    debian_flags=("${NGX_CONF_FLAGS[@]}")
fi
dev_version="$(tree_version "$dev_src")"

is_debian_build() {
    [ ${#debian_flags[@]} -gt 0 ] && [ "$dev_version" = "$bin_version" ] || return 1
    local f
    for f in "${debian_flags[@]}"; do has_arg "$f" || return 1; done
}

src="" flags=() kind=""
if [ -z "$bin_version" ]; then
    # No binary: build for Debian's nginx-dev as it is (a package build
    # host without nginx running).
    [ ${#debian_flags[@]} -gt 0 ] ||
        die "no nginx at $nginx_bin and no nginx-dev at $dev_src: install nginx-dev (apt-get install nginx-dev) or pass --nginx PATH"
    src="$dev_src" flags=("${debian_flags[@]}") kind=debian bin_version="$dev_version"
elif is_debian_build; then
    src="$dev_src" flags=("${debian_flags[@]}") kind=debian
else
    crate="$(crate_src)"
    if [ -n "${NGINX_SRC:-}" ] && [ "$(tree_version "$NGINX_SRC")" = "$bin_version" ]; then
        src="$NGINX_SRC" kind=given
    elif [ -n "$crate" ] && [ "$(tree_version "$crate")" = "$bin_version" ]; then
        src="$crate" kind=crate
    elif [ -n "$dev_version" ] && [ "$dev_version" = "$bin_version" ]; then
        src="$dev_src" kind=nginx-dev
    else
        found=""
        [ -n "$dev_version" ] && found+=" nginx-dev $dev_version ($dev_src);"
        [ -n "$crate" ] && found+=" the nginx-src crate's $(tree_version "$crate") ($crate);"
        [ -n "${NGINX_SRC:-}" ] && found+=" NGINX_SRC $(tree_version "$NGINX_SRC") ($NGINX_SRC);"
        found="${found%;}"
        die "$nginx_bin is nginx $bin_version, and no nginx $bin_version source is available offline (found:${found:- none}).
  Unpack the nginx $bin_version source (nginx-$bin_version.tar.gz from nginx.org, or your
  distribution's source package) and run:
    NGINX_SRC=/path/to/nginx-$bin_version $0 --nginx $nginx_bin"
    fi
    for a in "${bin_args[@]}"; do
        case "$a" in
            --add-module=* | --add-dynamic-module=*)
                say "leaving out $a (a third-party module's source; not part of the binary signature)" ;;
            --builddir=*) ;; # objs/ goes in the copy
            *) flags+=("$a") ;;
        esac
    done
    has_arg --with-compat ||
        say "warning: $nginx_bin was built without --with-compat: the module loads only if every configure flag matches, so all of them are used"
fi

if [ "$kind" = debian ]; then
    copy="$target/nginx-distro/src"
    cargo_target="$target/distro"
    : "${out:=$target/distro/ngx_http_upstreamtop_module.so}"
else
    copy="$target/nginx-$bin_version/src"
    cargo_target="$target/nginx-$bin_version/cargo"
    : "${out:=$target/nginx-$bin_version/ngx_http_upstreamtop_module.so}"
fi
if [ "$dry_run" -eq 1 ]; then
    printf 'version %s\nsource %s (%s)\nconfigure' "$bin_version" "$src" "$kind"
    printf ' %q' "${flags[@]}"
    printf '\nout %s\n' "$out"
    exit 0
fi
say "nginx ${bin_version}: source $src ($kind), configured in $copy"

# Re-configure only when the source or the flags changed since the last run.
stamp="$copy/.upstreamtop-configured"
# A release tarball has ./configure, nginx's repository (the crate) auto/configure.
configure=./configure
[ -f "$src/configure" ] || configure=auto/configure
[ -f "$src/$configure" ] || die "$src has no configure script"
want="$(printf '%s\n' "$src" "${flags[@]}"; stat -c '%Y' "$src/$configure")"
if [ ! -f "$copy/objs/ngx_auto_config.h" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "configuring a copy of $src in $copy"
    rm -rf "$copy"
    mkdir -p "$copy"
    cp -a "$src/." "$copy/"
    # A tree that was configured or built before (an unpacked tarball someone
    # used) must not lend its old objs/.
    rm -rf "$copy/objs" "$copy/Makefile"
    (cd "$copy" && "$configure" "${flags[@]}" >"$copy/configure.log" 2>&1) ||
        die "./configure failed, see $copy/configure.log (the binary's flags may need libraries whose -dev packages are missing)"
    printf '%s' "$want" >"$stamp"
fi

say "building the module against $copy/objs"
(cd "$root" &&
    NGINX_BUILD_DIR="$copy/objs" CARGO_TARGET_DIR="$cargo_target" \
        cargo build --release --no-default-features -p ngx_http_upstreamtop_module >&2)

so="$cargo_target/release/libngx_http_upstreamtop_module.so"
[ -f "$so" ] || die "cargo did not produce $so"

# The signature nginx compares at load_module ("8,4,8,0011...").
signature() { grep -aoE '[0-9]+,[0-9]+,[0-9]+,[01]{30,}' "$1" | head -1; }
if [ -x "$nginx_bin" ]; then
    want_sig="$(signature "$nginx_bin")" got_sig="$(signature "$so")"
    if [ -n "$want_sig" ] && [ "$want_sig" != "$got_sig" ]; then
        die "the module's signature $got_sig differs from $nginx_bin's $want_sig: it would not load (\"is not binary compatible\")"
    fi
fi

mkdir -p "$(dirname "$out")"
cp "$so" "$out.tmp" && mv "$out.tmp" "$out"
echo "$out"
