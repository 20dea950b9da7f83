#!/usr/bin/env bash
# upstreamtop: one entry point for building, trying and testing.
#
#   ./build.sh deps      install missing Debian packages (root)
#   ./build.sh build     release build: probe, dashboard, module (+ distro module)
#   ./build.sh demo      build, run the simulator + probe, open the dashboard (root)
#   ./build.sh lint      cargo fmt --check + cargo clippy --all-targets -D warnings
#   ./build.sh test      deps + lint + build + package + cargo test --workspace --release (root)
#                        --slow: also the full boot-level test (systemd in a container:
#                        restarts, kill -9, nginx reload/upgrade, package upgrade)
#   ./build.sh bench     benchmark suite (root; --quick, --pin): table + target/bench/latest.json
#                        --only 2 --baseline-probe PATH: BPF time per request beside another
#                        probe binary's, same run (ratio vs +15% budget); --impair-seed N
#                        replays part 7 (exactness over an impaired link, random seed)
#   ./build.sh install   install binaries, module, systemd unit, config examples
#   ./build.sh package   Debian packages in target/deb/: upstreamtop_<ver>_<arch>.deb and
#                        libnginx-mod-http-upstreamtop_<ver>_<arch>.deb (+ lintian)
#
# Environment: PREFIX (default /usr/local), DESTDIR (staging root) for
# install; DEMO_PORT (default 8080) and DEMO_NETNS=1 for demo.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")"
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$TARGET/release

# Debian packages the build, the tests and the demo need.
PACKAGES=(
    clang llvm libelf-dev zlib1g-dev libpcre2-dev libssl-dev libbpf-dev pkg-config
    make curl ca-certificates git linux-libc-dev
    bpftool iproute2 procps
    wrk tmux nginx-light nginx-dev prometheus
    strace systemd
    dpkg-dev debhelper lintian mmdebstrap systemd-container
    chromium chromium-driver
)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

need_root() {
    is_root || die "'$1' needs root: run  sudo $0 $1"
}

# Environment checks with a clear word on what will not work.
check_kernel() {
    local ok=0
    if [ ! -r /sys/kernel/btf/vmlinux ]; then
        warn "no BTF (/sys/kernel/btf/vmlinux): the probe cannot load its CO-RE programs; use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        ok=1
    fi
    local major minor
    IFS=. read -r major minor _ <<<"$(uname -r)"
    minor=${minor%%[!0-9]*}
    if [ "${major:-0}" -lt 6 ] || { [ "$major" -eq 6 ] && [ "${minor:-0}" -lt 6 ]; }; then
        warn "kernel $(uname -r) < 6.6 has no tcx: the probe cannot attach (needs Linux 6.6+)"
        ok=1
    fi
    if [ ! -e /proc/self/ns/net ] || ! command -v ip >/dev/null; then
        warn "no network namespace support (or no iproute2): the netns tests and --netns demo cannot run"
        ok=1
    fi
    return $ok
}

check_cargo() {
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs), then rerun"
}

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

cmd_deps() {
    command -v dpkg-query >/dev/null || die "not a Debian/Ubuntu system: install by hand: ${PACKAGES[*]}"
    local missing
    missing=$(missing_packages | tr '\n' ' ')
    if [ -z "${missing// /}" ]; then
        say "deps: all ${#PACKAGES[@]} packages present"
        return 0
    fi
    if ! is_root; then
        die "missing packages: $missing
run:  sudo apt-get update && sudo apt-get install -y --no-install-recommends $missing"
    fi
    say "deps: installing $missing"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package scripts from starting services (nginx on :80, prometheus)
    # on a build machine; only when no policy is in place already.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && own_policy=1
    fi
    local rc=0
    # shellcheck disable=SC2086
    { apt-get update -q && apt-get install -y -q --no-install-recommends $missing; } || rc=$?
    [ $own_policy -eq 1 ] && rm -f $policy
    [ $rc -eq 0 ] || die "apt-get failed (exit $rc)"
}

cmd_build() {
    check_cargo
    say "build: cargo build --release --workspace (first run builds nginx from source: a few minutes)"
    cargo build --release --workspace
    if [ -x /usr/sbin/nginx ] && [ -d /usr/share/nginx/src ]; then
        if [ -x module/build-distro.sh ]; then
            say "build: module for the distro nginx (module/build-distro.sh)"
            module/build-distro.sh
        else
            warn "module/build-distro.sh missing: skipping the distro module"
        fi
    else
        say "build: no /usr/sbin/nginx + /usr/share/nginx/src (nginx-dev): skipping the distro module"
    fi
    say "build: artifacts"
    local f
    for f in "$REL/upstreamtop-probe" "$REL/upstreamtop" "$REL/libngx_http_upstreamtop_module.so" \
             "$REL/simulate" "$TARGET/distro/ngx_http_upstreamtop_module.so"; do
        if [ -e "$f" ]; then echo "  $f"; else echo "  (missing) $f"; fi
    done
}

DEMO_PIDS=()
DEMO_DIR=""
# The demo probe's pins (maps, tcx links), apart from an installed probe's.
DEMO_STATE=/sys/fs/bpf/upstreamtop-demo
demo_cleanup() {
    trap - EXIT INT TERM
    local pid
    # The simulator removes its namespace and stops nginx on SIGTERM; the
    # probe keeps its tcx links pinned on SIGTERM, so detach removes them.
    # (Background jobs of a script ignore SIGINT, so TERM it is.)
    for pid in "${DEMO_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${DEMO_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    "$REL/upstreamtop-probe" detach --state-dir "$DEMO_STATE" >&2 || true
    [ -n "$DEMO_DIR" ] && echo "demo logs kept in $DEMO_DIR" >&2
    return 0
}

cmd_demo() {
    need_root demo
    check_kernel || warn "continuing; the probe may fail (see above)"
    cmd_build
    local port=${DEMO_PORT:-8080}
    local url="http://127.0.0.1:$port/upstreamtop"
    DEMO_DIR=$(mktemp -d /tmp/upstreamtop-demo.XXXXXX)
    chmod 755 "$DEMO_DIR"
    local table=$DEMO_DIR/table
    trap demo_cleanup EXIT
    trap 'exit 130' INT TERM

    local sim_args=(--port "$port" --table "$table")
    [ "${DEMO_NETNS:-0}" = 1 ] && sim_args+=(--netns)
    say "demo: simulator (nginx :$port + backends :9001 :9002 :9003), log $DEMO_DIR/simulate.log"
    "$REL/simulate" "${sim_args[@]}" >"$DEMO_DIR/simulate.log" 2>&1 &
    DEMO_PIDS+=($!)
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null && break
        kill -0 "${DEMO_PIDS[0]}" 2>/dev/null || { cat "$DEMO_DIR/simulate.log" >&2; die "simulator exited"; }
        sleep 0.1
    done

    say "demo: probe (--table $table --ignore-port $port), log $DEMO_DIR/probe.log"
    "$REL/upstreamtop-probe" --table "$table" --ignore-port "$port" --state-dir "$DEMO_STATE" >"$DEMO_DIR/probe.log" 2>&1 &
    DEMO_PIDS+=($!)
    sleep 2
    kill -0 "${DEMO_PIDS[1]}" 2>/dev/null || { cat "$DEMO_DIR/probe.log" >&2; die "probe exited"; }

    say "demo: live page in a browser: $url"
    if [ -x "$REL/upstreamtop" ] && [ -t 0 ] && [ -t 1 ]; then
        say "demo: dashboard (q to quit)"
        "$REL/upstreamtop" --url "$url" || true
    else
        [ -x "$REL/upstreamtop" ] || warn "dashboard not built; printing the endpoint instead"
        [ -t 1 ] || say "demo: no terminal; printing the endpoint instead of the dashboard"
        say "demo: $url every second (Ctrl-C to stop)"
        while true; do
            if [ -x "$REL/upstreamtop" ]; then
                "$REL/upstreamtop" --url "$url" --once || true
            else
                curl -sS "$url" | head -c 2000 || true
                echo
            fi
            echo "----"
            sleep 1
        done
    fi
}

# Formatting and lints, as the workspace defines them (rustfmt.toml,
# [workspace.lints]): a difference or a warning fails the run.
cmd_lint() {
    check_cargo
    if command -v rustup >/dev/null; then
        local c
        for c in rustfmt clippy; do
            rustup component list --installed | grep -q "^$c" || rustup component add "$c"
        done
    fi
    say "lint: cargo fmt --check"
    cargo fmt --all --check || die "formatting differs: run  cargo fmt"
    say "lint: cargo clippy --workspace --all-targets -- -D warnings"
    cargo clippy --release --workspace --all-targets -- -D warnings || die "clippy warnings (see above)"
}

cmd_test() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            # Read by nginx-tests/tests/systemd_boot.rs: the full boot-level test.
            --slow) export UPSTREAMTOP_SLOW_TESTS=1 ;;
            *) die "test: unknown argument $arg (--slow)" ;;
        esac
    done
    cmd_deps
    is_root || warn "not root: the netns, probe and module e2e tests need root (sudo $0 test)"
    check_kernel || warn "some end-to-end tests will fail on this machine (see above)"
    cmd_lint
    cmd_build
    # The packages the boot-level test installs (systemd_boot.rs).
    cmd_package
    say "test: cargo test --workspace --release${UPSTREAMTOP_SLOW_TESTS:+ (--slow: the full boot-level test too)}"
    local log rc=0
    log=$(mktemp /tmp/upstreamtop-test.XXXXXX.log)
    # pipefail: rc is cargo's status even through tee.
    cargo test --workspace --release 2>&1 | tee "$log" || rc=$?
    say "test summary"
    local passed failed ignored
    passed=$(grep '^test result:' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
    failed=$(grep '^test result:' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
    ignored=$(grep '^test result:' "$log" | grep -Eo '[0-9]+ ignored' | awk '{s+=$1} END {print s+0}')
    grep -E '^(test result:|     Running|   Doc-tests)' "$log" | grep -B1 '^test result:' | grep -v '^--' || true
    echo "total: $passed passed, $failed failed, $ignored ignored (log: $log)"
    if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; then
        grep -E '^test .* FAILED$|^    [a-z_:]+$' "$log" | sort -u | sed 's/^/  /' || true
        echo "test result: FAILED. $passed passed; $failed failed; $ignored ignored"
        exit 1
    fi
    echo "test result: ok. $passed passed; $failed failed; $ignored ignored"
}

cmd_bench() {
    check_cargo
    need_root bench
    local tool
    for tool in wrk bpftool taskset ip; do
        command -v "$tool" >/dev/null || die "$tool not found: run  sudo $0 deps"
    done
    check_kernel || warn "the probe may fail to attach on this kernel (see above)"
    # Release builds only: the bench points the fixtures at target/release
    # so a fresh debug build elsewhere cannot skew the figures.
    say "bench: cargo build --release (probe, module + vendored nginx, bench)"
    cargo build --release -p upstreamtop-probe -p ngx_http_upstreamtop_module
    cargo build --release -p nginx-tests --bin bench
    say "bench: $REL/bench $* (full suite: about 9 minutes; --quick: under a minute)"
    "$REL/bench" "$@"
}

# packaging/build-debs.sh: cargo + module/build-distro.sh (against Debian's
# nginx-dev), dpkg-buildpackage -b with packaging/debian/, lintian.
cmd_package() {
    check_cargo
    say "package: Debian packages (packaging/build-debs.sh) -> $TARGET/deb/"
    packaging/build-debs.sh
}

cmd_install() {
    local prefix=${PREFIX:-/usr/local} dest=${DESTDIR:-}
    if [ -z "$dest" ] && ! is_root; then
        die "install into $prefix needs root: sudo $0 install  (or DESTDIR=/tmp/stage $0 install)"
    fi
    local probe=$REL/upstreamtop-probe dash=$REL/upstreamtop mod=$REL/libngx_http_upstreamtop_module.so
    local distro=$TARGET/distro/ngx_http_upstreamtop_module.so
    [ -x "$probe" ] || die "$probe missing: run $0 build first"
    say "install: binaries -> $dest$prefix/bin"
    install -d "$dest$prefix/bin"
    install -m 0755 "$probe" "$dest$prefix/bin/"
    [ -x "$dash" ] && install -m 0755 "$dash" "$dest$prefix/bin/"
    if [ -f "$distro" ]; then
        # Built against the distro nginx: goes where Debian's nginx looks.
        say "install: distro module -> $dest/usr/lib/nginx/modules"
        install -d "$dest/usr/lib/nginx/modules"
        install -m 0644 "$distro" "$dest/usr/lib/nginx/modules/ngx_http_upstreamtop_module.so"
    fi
    if [ -f "$mod" ]; then
        say "install: module (for the vendored nginx build) -> $dest$prefix/lib/nginx/modules"
        install -d "$dest$prefix/lib/nginx/modules"
        install -m 0644 "$mod" "$dest$prefix/lib/nginx/modules/ngx_http_upstreamtop_module.so"
    fi
    local unit=config/upstreamtop-probe.service
    [ -f "$unit" ] || die "$unit missing"
    # /etc/systemd/system: where an admin-installed unit belongs (systemd
    # reads it first); the unit's ExecStart follows PREFIX.
    say "install: systemd unit -> $dest/etc/systemd/system/upstreamtop-probe.service"
    install -d "$dest/etc/systemd/system"
    sed "s|/usr/local/bin/|$prefix/bin/|g" "$unit" >"$dest/etc/systemd/system/upstreamtop-probe.service"
    chmod 0644 "$dest/etc/systemd/system/upstreamtop-probe.service"
    # The unit's User=upstreamtop, made by systemd-sysusers.
    say "install: system user -> $dest/etc/sysusers.d/upstreamtop.conf"
    install -D -m 0644 config/upstreamtop.sysusers "$dest/etc/sysusers.d/upstreamtop.conf"
    if [ -z "$dest" ]; then
        systemd-sysusers /etc/sysusers.d/upstreamtop.conf ||
            die "systemd-sysusers failed: create a system user upstreamtop (useradd --system upstreamtop)"
    fi
    local share=$dest$prefix/share/upstreamtop
    say "install: examples (nginx.conf, prometheus.yml, grafana-dashboard.json, the unit) -> $share"
    install -d "$share"
    local f
    for f in config/*; do
        [ -f "$f" ] && install -m 0644 "$f" "$share/"
    done
    cat <<EOF
next:
  systemctl daemon-reload && systemctl enable --now upstreamtop-probe
    (extra probe flags: UPSTREAMTOP_PROBE_ARGS="..." in /etc/default/upstreamtop-probe)
  add to nginx.conf (see $prefix/share/upstreamtop/nginx.conf):
    load_module modules/ngx_http_upstreamtop_module.so;
    location /upstreamtop { upstreamtop_status; allow 127.0.0.1; deny all; }
  nginx -t && systemctl reload nginx
  Prometheus: merge $prefix/share/upstreamtop/prometheus.yml into your scrape config
  Grafana: import $prefix/share/upstreamtop/grafana-dashboard.json
EOF
}

usage() {
    sed -n '2,/^# Environment:/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit "${1:-0}"
}

case "${1:-}" in
    deps) cmd_deps ;;
    build) cmd_build ;;
    demo) cmd_demo ;;
    test) shift; cmd_test "$@" ;;
    package) cmd_package ;;
    lint) cmd_lint ;;
    bench) shift; cmd_bench "$@" ;;
    install) cmd_install ;;
    -h | --help | help) usage 0 ;;
    *) usage 2 ;;
esac
