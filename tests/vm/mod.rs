//! Shell scripts (and this test binary itself) run as root inside a small
//! virtual machine with a real cgroup v2 hierarchy: Debian's own kernel under
//! `qemu-system-x86_64 -accel tcg`. This machine's kernel binds every cgroup
//! controller to v1, so berth's v2 backend is tested in such a guest.
//!
//! How it works:
//! - The kernel is the newest `/boot/vmlinuz-VERSION` that has
//!   `/lib/modules/VERSION/modules.dep` (Debian's `linux-image-amd64`, which
//!   `scripts/test.sh` installs), or `BERTH_VM_KERNEL`. When its config has
//!   `CONFIG_PVH`, the bzImage's payload is decompressed once into
//!   `CARGO_TARGET_TMPDIR/vm/` and booted as an ELF: that saves the ~3 s its
//!   decompressor takes under TCG.
//! - The initramfs is written here (a cpio "newc" archive, a few dozen lines of
//!   Rust, so no `cpio` package and no root needed to make `/dev/console`):
//!   busybox-static, the 9p, virtio and overlay modules with their
//!   dependencies from `modules.dep` (decompressed on the host if they are
//!   `.ko.xz`, `.ko.zst` or `.ko.gz`, busybox's insmod reads plain ones), and
//!   an `/init` shell script.
//! - `/init` mounts the host's `/` read-only over 9p, puts an overlay on it
//!   whose upper layer is a tmpfs (so the guest may write anywhere; nothing
//!   reaches the host), mounts proc, sysfs, devtmpfs, devpts, cgroup2 at
//!   `/sys/fs/cgroup` (controllers are available at the root and enabled
//!   nowhere: berth does that itself), fresh tmpfs at `/tmp`, `/run`,
//!   `/dev/shm`, `/var/lib/berth`, `/var/log/berth`, then the control share at
//!   `/vm` and the [`Opts::share`]s, sets up `lo` and (with forwarded ports)
//!   `eth0` as 10.0.2.15/24, chroots and runs the script with `/bin/sh` (the
//!   host's), then prints a marker line with its exit code and powers off.
//! - `/vm` in the guest is a fresh host directory ([`Guest::ctl`]) shared
//!   read-write (9p `security_model=passthrough`: files keep the uid of the
//!   guest process that made them). The script is `/vm/script.sh`; its exit code
//!   is also written to `/vm/exit`. The script has two helpers:
//!   `vm_signal NAME` creates `/vm/NAME`, `vm_wait NAME [SECONDS]` waits for it
//!   (default 60 s; status 1 on timeout); the host side is [`Guest::signal`]
//!   and [`Guest::wait_file`].
//! - The guest sees the host's users (its `/etc/passwd`), so users made with
//!   `useradd` before the boot exist inside; processes switched to them run
//!   programs from the 9p root with the host's permissions.
//! - Servers in the guest that a host test talks to listen on 0.0.0.0 (or
//!   10.0.2.15): [`Opts::forward`] asks qemu's user network to forward a
//!   loopback port of the host to them ([`Guest::port`] says which);
//!   `restrict=on`, so the guest reaches nothing else.
//! - The host's `/tmp` and `/run` are hidden in the guest by the fresh tmpfs:
//!   hand files in with [`Opts::share`] or `/vm`.
//!
//! Debugging a failing guest: the panic message of [`Outcome::success`] holds
//! the whole console and qemu's stderr. `BERTH_VM_DEBUG=1` streams the console
//! to stderr as it comes (even without `--nocapture`), boots without `quiet`
//! and leaves the kernel's messages on the console (OOM reports included), and
//! keeps each guest's temporary directory (its path is printed; it holds the
//! initramfs, `script.sh` and qemu's command line in `qemu.args`).
//! `BERTH_VM_JOBS` (default 2) is how many guests run at once.
//!
//! Entry points: [`run`] (a script, to its end), [`Guest::start`] (a script
//! in the background, for a host test that talks to it) and [`run_self`]
//! (one test of the calling test binary, by its full name, run inside: see
//! [`in_guest`]). From qemu's start to the script takes about 3 s on a quiet
//! machine of 2 cores, 4 to 5 s at a load of 5 and up to 14 s at 9; in a
//! fresh guest a program's first start reads it over 9p (python3: ~2 s, perl
//! much less).
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a guest gets; [`Opts::default`]: 1024 MiB, 2 CPUs, 90 s, no shares
/// beyond `/vm`, no network but loopback.
#[derive(Clone, Debug)]
pub struct Opts {
    /// The guest is killed this long after qemu starts (boot included).
    pub timeout: Duration,
    pub memory_mib: u32,
    pub cpus: u32,
    pub shares: Vec<Share>,
    /// Guest TCP ports reachable from the host's loopback.
    pub forwards: Vec<u16>,
}

/// A host directory mounted in the guest over 9p.
#[derive(Clone, Debug)]
pub struct Share {
    pub host: PathBuf,
    /// An absolute path in the guest; made if missing.
    pub guest: PathBuf,
    /// Read-write: the guest's writes reach the host directory, owned by the
    /// guest's uid (root stays root). Otherwise read-only.
    pub writable: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            timeout: Duration::from_secs(90),
            memory_mib: 1024,
            cpus: 2,
            shares: Vec::new(),
            forwards: Vec::new(),
        }
    }
}

impl Opts {
    pub fn timeout(mut self, t: Duration) -> Opts {
        self.timeout = t;
        self
    }

    pub fn memory_mib(mut self, m: u32) -> Opts {
        self.memory_mib = m;
        self
    }

    /// Mounts `host` at `guest`, read-write or read-only.
    pub fn share(
        mut self,
        host: impl Into<PathBuf>,
        guest: impl Into<PathBuf>,
        writable: bool,
    ) -> Opts {
        self.shares.push(Share {
            host: host.into(),
            guest: guest.into(),
            writable,
        });
        self
    }

    /// Forwards a free loopback port of the host to `guest_port` of the guest
    /// (10.0.2.15); see [`Guest::port`].
    pub fn forward(mut self, guest_port: u16) -> Opts {
        self.forwards.push(guest_port);
        self
    }
}

/// How a guest ended.
#[derive(Debug)]
pub struct Outcome {
    /// The script's exit status; -1 when the guest did not report one (it was
    /// killed at the deadline, panicked, or never got to the script).
    pub code: i32,
    /// Killed at the deadline.
    pub timed_out: bool,
    /// What the script wrote (stdout and stderr), from the console.
    pub output: String,
    /// The whole console: firmware, kernel, init, script.
    pub console: String,
    /// qemu's own stderr.
    pub stderr: String,
    /// From qemu's start to its end.
    pub elapsed: Duration,
    /// From qemu's start to the script's start, when it got there.
    pub boot: Option<Duration>,
}

impl Outcome {
    /// The script's output; panics with the whole story unless it exited 0.
    pub fn success(&self) -> &str {
        if self.code != 0 {
            panic!("guest script failed\n{}", self.report());
        }
        &self.output
    }

    /// Everything known, for a panic message.
    pub fn report(&self) -> String {
        format!(
            "exit code {} (timed out: {}), {:.1?} (boot {:?})\n\
             ----- console -----\n{}\n----- qemu stderr -----\n{}\n-----",
            self.code, self.timed_out, self.elapsed, self.boot, self.console, self.stderr
        )
    }
}

/// Boots a guest, runs `script` as root in it and waits for it to end (or
/// for `opts.timeout`).
pub fn run(script: &str, opts: &Opts) -> Outcome {
    Guest::start(script, opts).wait()
}

/// Whether this process runs inside a guest (the init says so in
/// `BERTH_VM=1`).
pub fn in_guest() -> bool {
    std::env::var_os("BERTH_VM").is_some_and(|v| v == "1")
}

/// Runs the test named `test` of this test binary inside a guest, and only
/// it: the usual shape of a test whose body needs cgroup v2 is
/// ```ignore
/// #[test]
/// fn limits() {
///     if !vm::in_guest() {
///         vm::run_self("limits", &vm::Opts::default()).success();
///         return;
///     }
///     // ... runs as root in the guest ...
/// }
/// ```
pub fn run_self(test: &str, opts: &Opts) -> Outcome {
    let exe = std::env::current_exe().expect("current_exe");
    let script = format!(
        "{} --exact {} --nocapture --test-threads=1\n",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(test)
    );
    run(&script, opts)
}

/// Where the guest's fresh tmpfs mounts hide the host's files.
const HIDDEN: [&str; 5] = [
    "/tmp",
    "/run",
    "/var/lib/berth",
    "/var/log/berth",
    "/dev/shm",
];

/// `opts` with the build shared read-only at the same paths when a fresh
/// tmpfs would hide it (a checkout under /tmp, as CI may make): the
/// repository, and the test binaries and berth (`target/debug`) when they
/// are elsewhere.
fn with_build(opts: &Opts) -> Opts {
    let mut opts = opts.clone();
    let hidden = |p: &Path| HIDDEN.iter().any(|h| p.starts_with(h));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if hidden(&repo) {
        opts = opts.share(repo.clone(), repo.clone(), false);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/TEST: berth is in target/debug.
    let build = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(&exe)
        .to_path_buf();
    if hidden(&build) && !(hidden(&repo) && build.starts_with(&repo)) {
        opts = opts.share(build.clone(), build, false);
    }
    opts
}

/// A running guest.
pub struct Guest {
    child: Child,
    console: Arc<Stream>,
    stderr: Arc<Stream>,
    readers: Vec<JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
    ctl: PathBuf,
    ports: Vec<(u16, u16)>,
    nonce: String,
    started: Instant,
    deadline: Instant,
    _slot: Slot,
}

impl Guest {
    /// Boots a guest that runs `script`; returns as soon as qemu is started.
    pub fn start(script: &str, opts: &Opts) -> Guest {
        let opts = &with_build(opts);
        let kernel = kernel();
        let slot = Slot::take();
        let dir = tempfile::Builder::new()
            .prefix("berth-vm-")
            .tempdir()
            .expect("temporary directory");
        let ctl = dir.path().join("ctl");
        fs::create_dir(&ctl).unwrap();
        // Guest users may write results here too.
        fs::set_permissions(&ctl, fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(ctl.join("script.sh"), format!("{PRELUDE}{script}")).unwrap();
        fs::set_permissions(ctl.join("script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let initrd = dir.path().join("initrd.cpio");
        fs::write(&initrd, &kernel.initramfs).unwrap();

        static COUNT: AtomicU64 = AtomicU64::new(0);
        let nonce = format!(
            "{:x}{:x}{:x}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let debug = debug();
        let mut append = format!("console=ttyS0 panic=-1 berth_vm_nonce={nonce}");
        if debug {
            append.push_str(" berth_vm_debug=1");
        } else {
            append.push_str(" quiet");
        }

        let fixed = "-accel tcg -nodefaults -no-user-config -nographic -serial stdio \
                     -monitor none -no-reboot";
        let mut args: Vec<String> = fixed.split_whitespace().map(String::from).collect();
        args.push("-m".into());
        args.push(opts.memory_mib.to_string());
        args.extend(["-smp".into(), opts.cpus.to_string(), "-kernel".into()]);
        args.push(kernel.image.to_string_lossy().into_owned());
        args.extend(["-initrd".into(), initrd.to_string_lossy().into_owned()]);
        args.extend(["-append".into(), append]);
        let mut virtfs = |path: &Path, tag: &str, model: &str, readonly: bool| {
            let mut v = format!(
                "local,path={},mount_tag={tag},security_model={model},multidevs=remap",
                path.to_string_lossy().replace(',', ",,")
            );
            if readonly {
                v.push_str(",readonly=on");
            }
            args.push("-virtfs".into());
            args.push(v);
        };
        virtfs(Path::new("/"), "hostroot", "none", true);
        virtfs(&ctl, "vmctl", "passthrough", false);
        let mut mounts = String::new();
        for (i, s) in opts.shares.iter().enumerate() {
            let guest = s.guest.to_string_lossy();
            assert!(
                s.guest.is_absolute() && !guest.contains(char::is_whitespace),
                "share's guest path must be absolute, without spaces: {guest}"
            );
            assert!(
                s.host.is_dir(),
                "share {} is not a directory",
                s.host.display()
            );
            let tag = format!("share{i}");
            virtfs(&s.host, &tag, "passthrough", !s.writable);
            let mode = if s.writable { "rw" } else { "ro" };
            writeln!(mounts, "{tag} {mode} {guest}").unwrap();
        }
        fs::write(ctl.join("mounts"), mounts).unwrap();
        let mut ports = Vec::new();
        if !opts.forwards.is_empty() {
            let mut netdev = "user,id=net0,restrict=on".to_string();
            for &g in &opts.forwards {
                let h = free_port();
                write!(netdev, ",hostfwd=tcp:127.0.0.1:{h}-:{g}").unwrap();
                ports.push((g, h));
            }
            args.extend([
                "-netdev".into(),
                netdev,
                "-device".into(),
                "virtio-net-pci,netdev=net0".into(),
            ]);
        }
        fs::write(dir.path().join("qemu.args"), args.join("\n")).unwrap();

        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/test.sh installs qemu-system-x86)");
        let console = Arc::new(Stream::default());
        let stderr = Arc::new(Stream::default());
        let readers = vec![
            console
                .clone()
                .read_from(child.stdout.take().unwrap(), debug),
            stderr
                .clone()
                .read_from(child.stderr.take().unwrap(), debug),
        ];
        let dir = if debug {
            let path = dir.keep();
            // Past the test harness's capture, like the console.
            let line = format!("berth-vm: guest {nonce} in {}\n", path.display());
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        } else {
            Some(dir)
        };
        Guest {
            child,
            console,
            stderr,
            readers,
            dir,
            ctl,
            ports,
            nonce,
            started,
            deadline: started + opts.timeout,
            _slot: slot,
        }
    }

    /// The host's loopback port forwarded to `guest_port`.
    pub fn port(&self, guest_port: u16) -> u16 {
        self.ports
            .iter()
            .find(|(g, _)| *g == guest_port)
            .unwrap_or_else(|| panic!("guest port {guest_port} is not forwarded"))
            .1
    }

    /// The host directory that is `/vm` in the guest.
    pub fn ctl(&self) -> &Path {
        &self.ctl
    }

    /// Creates `/vm/NAME` for the script's `vm_wait NAME`.
    pub fn signal(&self, name: &str) {
        fs::write(self.ctl.join(name), b"").unwrap();
    }

    /// Waits up to `within` for the script to create `/vm/NAME` (with
    /// `vm_signal NAME`); false if it did not, or the guest ended first.
    pub fn wait_file(&mut self, name: &str, within: Duration) -> bool {
        let path = self.ctl.join(name);
        let until = Instant::now() + within;
        loop {
            if path.exists() {
                return true;
            }
            if Instant::now() >= until || self.ended() {
                return path.exists();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `within` for `needle` on the console (after the script's
    /// start); false if it did not come, or the guest ended first.
    pub fn wait_console(&self, needle: &str, within: Duration) -> bool {
        let until = Instant::now() + within;
        let start = self.start_marker();
        let mut got = self.console.state.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&got.bytes);
            if text
                .find(&start)
                .is_some_and(|at| text[at..].contains(needle))
            {
                return true;
            }
            let now = Instant::now();
            if now >= until || got.eof {
                return false;
            }
            got = self.console.more.wait_timeout(got, until - now).unwrap().0;
        }
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// Waits for the guest to power off, or kills it `within` from now (or at
    /// its deadline, when that comes first).
    pub fn wait_within(mut self, within: Duration) -> Outcome {
        self.deadline = self.deadline.min(Instant::now() + within);
        self.wait()
    }

    /// Waits for the guest to power off, or kills it at the deadline.
    pub fn wait(mut self) -> Outcome {
        let mut timed_out = false;
        loop {
            if self.ended() {
                break;
            }
            if Instant::now() >= self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let console = self.console.text();
        let stderr = self.stderr.text();
        let start = self.start_marker();
        let exit = format!("@@BERTH-VM-EXIT {} ", self.nonce);
        let (mut output, mut code) = (String::new(), -1);
        if let Some(at) = console.find(&start) {
            let rest = console[at + start.len()..].trim_start_matches('\n');
            match rest.find(&exit) {
                Some(end) => {
                    output = rest[..end].to_string();
                    code = rest[end + exit.len()..]
                        .split("@@")
                        .next()
                        .and_then(|c| c.trim().parse().ok())
                        .unwrap_or(-1);
                }
                None => output = rest.to_string(),
            }
        }
        let boot = self.console.state.lock().unwrap().start;
        let boot = boot.map(|b| b - self.started);
        eprintln!(
            "berth-vm: guest {} exited {code} after {elapsed:.1?} (script started after {boot:.1?}){}",
            self.nonce,
            if timed_out {
                ", killed at its deadline"
            } else {
                ""
            }
        );
        Outcome {
            code,
            timed_out,
            output,
            console,
            stderr,
            elapsed,
            boot,
        }
    }

    fn ended(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn start_marker(&self) -> String {
        format!("@@BERTH-VM-START {}@@", self.nonce)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Output of qemu, as it comes.
#[derive(Default)]
struct Stream {
    state: Mutex<Got>,
    more: Condvar,
}

#[derive(Default)]
struct Got {
    bytes: Vec<u8>,
    eof: bool,
    /// When the script's start marker came (for [`Outcome::boot`]).
    start: Option<Instant>,
}

impl Stream {
    fn read_from(
        self: Arc<Self>,
        mut from: impl Read + Send + 'static,
        echo: bool,
    ) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if echo {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                let mut got = self.state.lock().unwrap();
                got.bytes.extend_from_slice(&buf[..n]);
                if got.start.is_none() && find(&got.bytes, b"@@BERTH-VM-START").is_some() {
                    got.start = Some(Instant::now());
                }
                drop(got);
                self.more.notify_all();
            }
            self.state.lock().unwrap().eof = true;
            self.more.notify_all();
        })
    }

    fn text(&self) -> String {
        clean(&self.state.lock().unwrap().bytes)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Console text without carriage returns.
fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace("\r\n", "\n")
        .replace('\r', "")
}

fn debug() -> bool {
    std::env::var_os("BERTH_VM_DEBUG").is_some_and(|v| !v.is_empty() && v != "0")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// At most `BERTH_VM_JOBS` (default 2) guests at once in this process.
struct Slot;

static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();

impl Slot {
    fn take() -> Slot {
        let max = std::env::var("BERTH_VM_JOBS")
            .ok()
            .and_then(|j| j.parse().ok())
            .filter(|&j: &usize| j > 0)
            .unwrap_or(2);
        let mut n = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= max {
            n = SLOT_FREED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *SLOTS.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        SLOT_FREED.notify_one();
    }
}

/// A loopback port for qemu to forward, below the ephemeral range (like
/// tests/common's `free_port`, in another range) and never twice.
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::process::id() as usize;
    for i in 0..5000 {
        let port = 15000 + ((seed * 7919 + i * 613) % 5000) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port between 15000 and 20000")
}

/// Sourced before every script: helpers to talk with the host through `/vm`.
const PRELUDE: &str = r#"vm_signal() { : > "/vm/$1"; }
vm_wait() {
  vm_n=$(( ${2:-60} * 10 ))
  while [ ! -e "/vm/$1" ]; do
    vm_n=$((vm_n - 1))
    if [ "$vm_n" -le 0 ]; then echo "vm_wait $1: timed out" >&2; return 1; fi
    sleep 0.1
  done
}
"#;

/// The guest's /init (busybox sh).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /lower /upper /newroot
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
nonce=$berth_vm_nonce
R=/newroot
fail() {
  echo "berth-vm init: $*"
  echo "@@BERTH-VM-START $nonce@@"
  echo "@@BERTH-VM-EXIT $nonce 254@@"
  poweroff -f
}
for m in $(cat /modules/order); do
  insmod "/modules/$m" || fail "insmod $m"
done
nine="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$nine,ro,cache=loose" hostroot /lower || fail "9p root"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "tmpfs /upper"
mkdir /upper/upper /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/upper,workdir=/upper/work overlay $R || fail overlay
mount -t proc proc $R/proc || fail "proc"
mount -t sysfs sysfs $R/sys || fail "sysfs"
mount -t devtmpfs devtmpfs $R/dev || fail "devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $R/dev/pts || fail devpts
mount -t cgroup2 -o nsdelegate cgroup2 $R/sys/fs/cgroup || fail cgroup2
for d in /tmp:1777 /run:0755 /dev/shm:1777 /var/lib/berth:0755 /var/log/berth:0755; do
  mkdir -p "$R${d%:*}"
  mount -t tmpfs -o "mode=${d#*:}" tmpfs "$R${d%:*}" || fail "tmpfs ${d%:*}"
done
mkdir -p $R/vm
mount -t 9p -o "$nine,cache=none" vmctl $R/vm || fail "9p /vm"
while read -r tag mode path; do
  mkdir -p "$R$path"
  mount -t 9p -o "$nine,cache=none,$mode" "$tag" "$R$path" || fail "9p $path"
done < $R/vm/mounts
hostname berth-vm
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 || fail "eth0"
fi
[ -n "$berth_vm_debug" ] || echo 1 > /proc/sys/kernel/printk
echo "@@BERTH-VM-START $nonce@@"
chroot $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root USER=root LOGNAME=root TERM=dumb LANG=C.UTF-8 BERTH_VM=1 \
  /bin/sh /vm/script.sh < /dev/null 2>&1
code=$?
echo $code > $R/vm/exit
echo "@@BERTH-VM-EXIT $nonce $code@@"
poweroff -f
"#;

/// Modules the init loads (with what they need, from `modules.dep`); any may
/// be built in.
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_net"];

/// The kernel to boot and an initramfs for it.
struct Kernel {
    image: PathBuf,
    initramfs: Vec<u8>,
}

fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let (vmlinuz, version) = find_kernel();
        let image = boot_image(&vmlinuz, &version);
        let initramfs = initramfs(&version);
        Kernel { image, initramfs }
    })
}

/// The newest /boot/vmlinuz-VERSION with modules, or `BERTH_VM_KERNEL`.
fn find_kernel() -> (PathBuf, String) {
    if let Some(k) = std::env::var_os("BERTH_VM_KERNEL") {
        let k = PathBuf::from(k);
        let name = k.file_name().unwrap().to_string_lossy().into_owned();
        let version = name.strip_prefix("vmlinuz-").unwrap_or(&name).to_string();
        return (k, version);
    }
    let mut found: Vec<(PathBuf, String)> = fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&version)
                .join("modules.dep")
                .exists()
                .then(|| (e.path(), version))
        })
        .collect();
    found.sort_by_key(|(_, version)| natural(version));
    found.pop().expect(
        "no /boot/vmlinuz-* with /lib/modules/*/modules.dep \
         (scripts/test.sh installs linux-image-amd64)",
    )
}

/// "6.1.0-57-amd64" as numbers and words, so that 57 sorts after 9.
fn natural(v: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let word = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        out.push((num.parse().unwrap_or(0), tail[..word].to_string()));
        rest = &tail[word..];
    }
    out
}

/// The ELF inside a bzImage, decompressed once into the target directory,
/// when the kernel can be booted that way (PVH); else the bzImage itself.
fn boot_image(vmlinuz: &Path, version: &str) -> PathBuf {
    let config = fs::read_to_string(format!("/boot/config-{version}")).unwrap_or_default();
    if !config.lines().any(|l| l == "CONFIG_PVH=y") {
        return vmlinuz.to_path_buf();
    }
    let meta = fs::metadata(vmlinuz).expect("kernel image");
    let mtime = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm");
    let out = cache.join(format!("vmlinux-{version}-{}-{mtime}", meta.len()));
    if out.exists() {
        return out;
    }
    fs::create_dir_all(&cache).unwrap();
    let image = fs::read(vmlinuz).expect("kernel image");
    let formats: [(&[u8], &str, &[&str]); 3] = [
        (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dcq"]),
        (b"\x1f\x8b\x08", "gzip", &["-dc"]),
    ];
    for (magic, tool, args) in formats {
        let Some(at) = find(&image, magic) else {
            continue;
        };
        let Ok(mut child) = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            continue;
        };
        let mut stdin = child.stdin.take().unwrap();
        let payload = image[at..].to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&payload);
        });
        let mut elf = Vec::new();
        let _ = child.stdout.take().unwrap().read_to_end(&mut elf);
        let _ = child.wait();
        let _ = writer.join();
        // Trailing data makes some tools complain; the ELF is what counts.
        if elf.starts_with(b"\x7fELF") {
            let tmp = cache.join(format!(".vmlinux-{}", std::process::id()));
            fs::write(&tmp, &elf).unwrap();
            fs::rename(&tmp, &out).unwrap();
            return out;
        }
    }
    vmlinuz.to_path_buf()
}

/// busybox, the modules, /init and /dev/console, as a cpio "newc" archive.
fn initramfs(version: &str) -> Vec<u8> {
    let busybox =
        fs::read("/bin/busybox").expect("/bin/busybox (scripts/test.sh installs busybox-static)");
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "modules"] {
        cpio.dir(d);
    }
    cpio.node("dev/console", 0o020600, (5, 1));
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    let mut order = String::new();
    for (name, bytes) in modules(version) {
        cpio.file(&format!("modules/{name}"), 0o644, &bytes);
        writeln!(order, "{name}").unwrap();
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    cpio.finish()
}

/// [`MODULES`] and their dependencies, each after what it needs, as
/// (file name, uncompressed module).
fn modules(version: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new("/lib/modules").join(version);
    let dep = fs::read_to_string(root.join("modules.dep")).expect("modules.dep");
    let builtin = fs::read_to_string(root.join("modules.builtin")).unwrap_or_default();
    let key = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap().replace('-', "_")
    };
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep.lines() {
        let Some((path, needs)) = line.split_once(':') else {
            continue;
        };
        let needs = needs.split_whitespace().map(key).collect();
        deps.insert(key(path), (path.to_string(), needs));
    }
    let builtin: Vec<String> = builtin.lines().map(key).collect();
    fn visit(m: &str, deps: &HashMap<String, (String, Vec<String>)>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        let (_, needs) = &deps[m];
        for n in needs {
            visit(n, deps, order);
        }
        order.push(m.to_string());
    }
    let mut order = Vec::new();
    for m in MODULES {
        if deps.contains_key(*m) {
            visit(m, &deps, &mut order);
        } else {
            assert!(
                builtin.iter().any(|b| b == m),
                "kernel {version} has no module {m}, built in or not"
            );
        }
    }
    order
        .into_iter()
        .map(|m| {
            let path = root.join(&deps[&m].0);
            let p = path.to_string_lossy();
            let tool = [(".ko.xz", "xz"), (".ko.zst", "zstd"), (".ko.gz", "gzip")]
                .into_iter()
                .find(|(ext, _)| p.ends_with(ext))
                .map(|(_, tool)| tool);
            let bytes = match tool {
                None => fs::read(&path).unwrap(),
                Some(tool) => {
                    let out = Command::new(tool)
                        .arg("-dc")
                        .arg(&path)
                        .output()
                        .unwrap_or_else(|e| panic!("{tool} -dc {p}: {e}"));
                    assert!(out.status.success(), "{tool} -dc {p} failed");
                    out.stdout
                }
            };
            (format!("{m}.ko"), bytes)
        })
        .collect()
}

/// A cpio archive in the "newc" format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, rdev, &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            write!(self.out, "{f:08x}").unwrap();
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}
