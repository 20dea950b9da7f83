#!/usr/bin/env bash
# Build the Debian packages (what `./build.sh package` runs):
#   upstreamtop_<ver>_<arch>.deb                   probe, dashboard, the systemd unit,
#                                                  /etc/default/upstreamtop-probe, man
#                                                  pages, completions, examples
#   libnginx-mod-http-upstreamtop_<ver>_<arch>.deb the module, built against this
#                                                  system's nginx-dev (Debian's nginx)
# into <target>/deb/, then check them with lintian (any tag not overridden
# in packaging/debian/*.lintian-overrides fails the build).
#
# Offline once the crates are in cargo's registry: cargo builds the
# binaries and upstreamtop-gen (man pages, completions from the clap
# definitions), module/build-distro.sh the module against nginx-dev, and
# dpkg-buildpackage -b packs them with debhelper (packaging/debian/): dh_nginx
# adds the modules-available snippet, its modules-enabled link and the
# nginx-abi-<version> dependency, dh_installsystemd the unit's enable/start.
#
# Env: UPSTREAMTOP_DEB_VERSION  package version (default: the workspace version)
#      CARGO_TARGET_DIR         workspace target dir (default <repo>/target)
#      LINTIAN=0                skip the lintian check
# Prints the two .deb paths as its last lines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
rel="$target/release"

say() { printf '\033[1m==> package: %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m package: %s\n' "$*" >&2; exit 1; }

for tool in dpkg-buildpackage dh dh_nginx dpkg-deb; do
    command -v "$tool" >/dev/null ||
        die "$tool not found: run  sudo ./build.sh deps  (packages dpkg-dev, debhelper, nginx-dev)"
done

# [workspace.package] version, the first `version =` of the root manifest.
upstream="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)"
[ -n "$upstream" ] || die "no version in $root/Cargo.toml"
version="${UPSTREAMTOP_DEB_VERSION:-$upstream}"

say "cargo build --release (probe, dashboard, upstreamtop-gen)"
(cd "$root" && cargo build --release -p upstreamtop-probe -p upstreamtop -p upstreamtop-gen)
say "module against Debian's nginx-dev (module/build-distro.sh)"
module="$("$root/module/build-distro.sh" | tail -1)"
[ -f "$module" ] || die "module/build-distro.sh produced no module"

out="$target/deb"
build="$out/build"
stage="$build/upstreamtop-$version"
rm -rf "$build"
mkdir -p "$stage/artifacts"
cp -a "$here/debian" "$stage/debian"
# The unit's system user: dh_installsysusers installs it to
# /usr/lib/sysusers.d/upstreamtop.conf and runs systemd-sysusers in postinst.
cp "$root/config/upstreamtop.sysusers" "$stage/debian/upstreamtop.sysusers"
a="$stage/artifacts"

say "staging artifacts in $a"
install -D -m 0755 "$rel/upstreamtop-probe" "$a/bin/upstreamtop-probe"
install -D -m 0755 "$rel/upstreamtop" "$a/bin/upstreamtop"
install -D -m 0644 "$module" "$a/module/ngx_http_upstreamtop_module.so"
"$rel/upstreamtop-gen" "$a" >/dev/null
# The unit of config/, with the packaged binary's path; `man` knows it.
sed -e 's|/usr/local/bin/|/usr/bin/|g' \
    -e 's|^# Install: ./build.sh install, then$|# Installed by the upstreamtop package (enabled and started); by hand:|' \
    -e 's|^Description=.*|&\nDocumentation=man:upstreamtop-probe(1)|' \
    "$root/config/upstreamtop-probe.service" >"$a/upstreamtop-probe.service"
install -D -m 0644 "$here/default/upstreamtop-probe" "$a/default/upstreamtop-probe"
install -d "$a/examples" "$a/doc"
install -m 0644 "$root/config/nginx.conf" "$root/config/prometheus.yml" "$root/config/grafana-dashboard.json" "$a/examples/"
install -m 0644 "$root/README.md" "$root/docs/operations.md" "$root/docs/json.md" "$root/docs/prometheus.md" "$a/doc/"
install -m 0644 "$root/CHANGELOG.md" "$a/CHANGELOG.md"

# debian/changelog: one entry for this version, dated like the last commit
# so that two builds of one commit are the same.
date="$(git -C "$root" log -1 --format=%cD 2>/dev/null || date -R)"
maint="$(sed -n 's/^Maintainer: //p' "$here/debian/control")"
cat >"$stage/debian/changelog" <<EOF
upstreamtop ($version) stable; urgency=medium

  * upstreamtop $upstream, packaged from its repository (what changed:
    /usr/share/doc/upstreamtop/changelog.gz).

 -- $maint  $date
EOF

say "dpkg-buildpackage -b (debhelper, dh_nginx, dh_installsystemd)"
(cd "$stage" && SOURCE_DATE_EPOCH="$(date -d "$date" +%s)" \
    dpkg-buildpackage -b --no-sign >"$build/dpkg-buildpackage.log" 2>&1) || {
    tail -40 "$build/dpkg-buildpackage.log" >&2
    die "dpkg-buildpackage failed (log: $build/dpkg-buildpackage.log)"
}
arch="$(dpkg-architecture -qDEB_HOST_ARCH)"
debs=("upstreamtop_${version}_$arch.deb" "libnginx-mod-http-upstreamtop_${version}_$arch.deb")
rm -f "$out"/upstreamtop_*.deb "$out"/libnginx-mod-http-upstreamtop_*.deb
for deb in "${debs[@]}"; do
    [ -f "$build/$deb" ] || die "dpkg-buildpackage made no $deb (log: $build/dpkg-buildpackage.log)"
    mv "$build/$deb" "$out/$deb"
done

if [ "${LINTIAN:-1}" != 0 ]; then
    command -v lintian >/dev/null || die "lintian not found: run  sudo ./build.sh deps  (or LINTIAN=0)"
    say "lintian (tags we keep are explained in packaging/debian/*.lintian-overrides)"
    # --fail-on warning: errors and warnings fail; info tags are printed.
    (cd "$out" && lintian --fail-on error,warning --display-info "${debs[@]}") ||
        die "lintian found problems (above)"
fi
for deb in "${debs[@]}"; do
    echo "$out/$deb"
done
