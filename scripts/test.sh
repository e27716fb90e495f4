#!/usr/bin/env bash
# The whole test suite, as CI runs it. Needs root: the isolation tests create Unix
# users (berth-t*), switch to them and check what the kernel enforces.
# Installs what the tests need from Debian's packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then exec sudo -E env "PATH=$PATH" bash "$0" "$@"; fi
  echo "scripts/test.sh: run as root (the tests create users and drop privileges)" >&2
  exit 1
fi

# Debian packages the tests use: htpasswd (apache2-utils) to write real htpasswd
# files, php-cgi as a real FastCGI app, Debian's python3 for HTTP apps (socket
# activation) and perl for small clients, python3-h2 to send raw HTTP/2 frames
# (tests/h2_conformance.rs), useradd (passwd), runuser/setpriv (util-linux),
# mkfifo (coreutils), git and its git-http-backend (a real client pushing
# through a CGI app), slowhttptest for slowloris and slow-body attacks
# (tests/fairness.rs), openssl for certificates rcgen cannot make (SHA-1
# signed, expiring in days: tests/audit.rs).
need=()
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v php-cgi >/dev/null || need+=(php-cgi)
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -c 'import h2' 2>/dev/null || need+=(python3-h2)
[ -x /usr/bin/perl ] || need+=(perl-base)
command -v useradd >/dev/null || need+=(passwd)
{ [ -x /usr/bin/git ] && [ -x /usr/lib/git-core/git-http-backend ]; } || need+=(git)
command -v runuser >/dev/null || need+=(util-linux)
command -v setpriv >/dev/null || need+=(util-linux)
command -v slowhttptest >/dev/null || need+=(slowhttptest)
command -v openssl >/dev/null || need+=(openssl)
# The cgroup v2 tests (tests/cgroup_v2.rs, tests/vm) boot Debian's kernel under
# qemu (TCG) with busybox-static in an initramfs the harness writes, and xz to
# unpack the kernel once (and modules, where they are compressed). The kernel
# package needs an initramfs generator: when none is installed, tiny-initramfs
# (seconds, no dependencies but cpio), not initramfs-tools, whose udev drags a
# systemd upgrade into a container; tiny-initramfs conflicts with the others,
# so it is never asked for next to one.
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ $(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true) == *"ok installed" ]] ||
  need+=(busybox-static)
command -v xz >/dev/null || need+=(xz-utils)
if ! compgen -G '/boot/vmlinuz-*' >/dev/null; then
  need+=(linux-image-amd64)
  initramfs_tools=$(dpkg-query -W -f='${Status}\n' initramfs-tools dracut tiny-initramfs 2>/dev/null || true)
  [[ $initramfs_tools == *"ok installed"* ]] || need+=(tiny-initramfs)
fi
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The front end runs tests as this user; the demo config names these users.
for u in berth-tfront berth-demo-front berth-demo-alice berth-demo-bob; do
  id "$u" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin "$u"
done

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
