//! The seccomp filter (issue 10) on real programs: a probe in Python makes
//! each refused call through `ctypes` and prints what the kernel answered,
//! once under the filter and once without it. The probe runs as root, whom
//! the kernel lets make every one of these calls: an EPERM under the filter
//! is the filter's, and the run without it shows the call reached the kernel
//! (some answer other than EPERM). Then the programs a web app is made of
//! (php-cgi, perl, python, git, the shell, getent) run under the filter as
//! a tenant's user, unchanged.
#![cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
// pre_exec: the closure runs in the forked child (see `confine`).
#![allow(unsafe_code)]

mod common;
use common::*;

use berth::isolation::seccomp::{DENIED, Filter};

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Output, Stdio};

/// Debian's Python (the tests' ctypes probe and app).
const PYTHON: &str = "/usr/bin/python3";
/// The tenant user the apps run as.
const USER: &str = "berth-tseccomp";

/// Makes each call named on its command line (`label=number`, a label
/// being `name` or `name:argument`) and prints `label ok` or `label ERRNO`.
/// The calls are harmless: they point at nothing that exists, pass
/// arguments the kernel rejects after its permission checks, or touch only
/// the probe itself.
const PROBE: &str = r#"
import ctypes, errno, os, struct, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
A = ctypes.addressof
buf = ctypes.create_string_buffer
AT_FDCWD = -100
MISSING = b"/nonexistent-berth-probe"

def call(nr, *args):
    args = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *args)
    return r, ctypes.get_errno()

def iov(b):
    v = buf(16)
    struct.pack_into("QQ", v, 0, A(b), len(b))
    return v

def process_vm(nr, arg):
    # 8 bytes from one buffer of the probe to another.
    a, b = buf(8), buf(8)
    la, lb = iov(a), iov(b)
    return call(nr, os.getpid(), A(la), 1, A(lb), 1, 0)

def bpf(nr, arg):
    # BPF_MAP_CREATE: an array of one 4-byte value.
    attr = buf(128)
    struct.pack_into("IIII", attr, 0, 2, 4, 4, 1)
    return call(nr, 0, A(attr), 128)

def perf_event_open(nr, arg):
    # The probe's own task clock (a software event).
    attr = buf(128)
    struct.pack_into("IIQ", attr, 0, 1, 128, 1)
    return call(nr, A(attr), 0, -1, -1, 0)

def with_buffer(size, f):
    def probe(nr, arg):
        b = buf(size)
        return f(nr, A(b))
    return probe

def clone(nr, arg):
    # Raw clone, as fork: the child leaves at once.
    r, e = call(nr, int(arg, 0) | 17, 0, 0, 0, 0)  # | SIGCHLD
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    return r, e

def int80(nr, arg):
    # getpid through the i386 ABI: mov eax, 20; int 0x80; ret.
    import mmap, resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))
    r = ctypes.CFUNCTYPE(ctypes.c_int)(A(ctypes.c_char.from_buffer(m)))()
    return "ok" if r == os.getpid() else "answered %d" % r

PROBES = {
    "ptrace": lambda nr, a: call(nr, 0, 0, 0, 0),  # PTRACE_TRACEME
    "process_vm_readv": process_vm,
    "process_vm_writev": process_vm,
    "kexec_load": lambda nr, a: call(nr, 0, 0xFFFF, 0, 0),  # too many segments
    "kexec_file_load": lambda nr, a: call(nr, -1, -1, 0, 0, 0),
    "init_module": lambda nr, a: call(nr, 0, 0, b""),
    "finit_module": lambda nr, a: call(nr, -1, b"", 0),
    "delete_module": lambda nr, a: call(nr, b"berth_no_such_module", 0),
    "bpf": bpf,
    "perf_event_open": perf_event_open,
    "userfaultfd": lambda nr, a: call(nr, os.O_CLOEXEC),
    "keyctl": lambda nr, a: call(nr, 0, -2, 1),  # the process keyring's id
    "add_key": lambda nr, a: call(nr, b"user", b"berth-probe", b"x", 1, -2),
    "request_key": lambda nr, a: call(nr, b"user", b"berth-no-such-key", 0, 0),
    "mount": lambda nr, a: call(nr, b"none", MISSING, b"tmpfs", 0, 0),
    "umount2": lambda nr, a: call(nr, MISSING, 0),
    "pivot_root": lambda nr, a: call(nr, MISSING, MISSING),
    "unshare": lambda nr, a: call(nr, int(a or "0x10000000", 0)),  # CLONE_NEWUSER
    "setns": lambda nr, a: call(nr, -1, 0),
    "open_tree": lambda nr, a: call(nr, AT_FDCWD, MISSING, 0),
    "move_mount": lambda nr, a: call(nr, -1, b"", -1, b"", 0),
    "fsopen": lambda nr, a: call(nr, b"berth-no-such-fs", 0),
    "fsconfig": lambda nr, a: call(nr, -1, 0, 0, 0, 0),
    "fsmount": lambda nr, a: call(nr, -1, 0, 0),
    "fspick": lambda nr, a: call(nr, AT_FDCWD, MISSING, 0),
    "mount_setattr": lambda nr, a: call(nr, AT_FDCWD, MISSING, 0, 0, 0),
    "open_by_handle_at": lambda nr, a: call(nr, -1, 0, 0),
    "pidfd_getfd": lambda nr, a: call(nr, -1, 0, 0),
    "modify_ldt": with_buffer(16, lambda nr, p: call(nr, 0, p, 16)),  # a read
    "uselib": lambda nr, a: call(nr, MISSING),
    "acct": lambda nr, a: call(nr, MISSING + b"/acct"),
    "swapon": lambda nr, a: call(nr, MISSING, 0),
    "swapoff": lambda nr, a: call(nr, MISSING),
    "reboot": lambda nr, a: call(nr, 0, 0, 0, 0),  # no magic: EINVAL
    "settimeofday": lambda nr, a: call(nr, 0, 0),  # sets nothing
    "clock_settime": with_buffer(16, lambda nr, ts: call(nr, 1, ts)),  # CLOCK_MONOTONIC: EINVAL
    "clock_adjtime": with_buffer(512, lambda nr, tx: call(nr, 0, tx)),  # modes 0: a read
    "adjtimex": with_buffer(512, lambda nr, tx: call(nr, tx)),
    "personality": lambda nr, a: call(nr, int(a or "0x0040000", 0)),  # ADDR_NO_RANDOMIZE
    "io_uring_setup": with_buffer(120, lambda nr, p: call(nr, 1, p)),
    "io_uring_enter": lambda nr, a: call(nr, -1, 0, 0, 0, 0, 0),
    "io_uring_register": lambda nr, a: call(nr, -1, 0, 0, 0),
    "clone": clone,
    "clone3": lambda nr, a: call(nr, 0, 0),  # no arguments: EINVAL from the kernel
    "x32_getpid": lambda nr, a: call(nr),
    "int80": int80,
}

for spec in sys.argv[1:]:
    label, nr = spec.split("=")
    name, _, arg = label.partition(":")
    r = PROBES[name](int(nr, 0), arg)
    if not isinstance(r, str):
        r = errno.errorcode[r[1]] if r[0] == -1 else "ok"
    print(label, r, flush=True)
"#;

/// The number of a call the probe makes, from the libc crate (independent
/// of the module's own table).
fn nr(name: &str) -> i64 {
    match name {
        "ptrace" => libc::SYS_ptrace,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "bpf" => libc::SYS_bpf,
        "perf_event_open" => libc::SYS_perf_event_open,
        "userfaultfd" => libc::SYS_userfaultfd,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "open_tree" => libc::SYS_open_tree,
        "move_mount" => libc::SYS_move_mount,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "mount_setattr" => libc::SYS_mount_setattr,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "pidfd_getfd" => libc::SYS_pidfd_getfd,
        #[cfg(target_arch = "x86_64")]
        "modify_ldt" => libc::SYS_modify_ldt,
        #[cfg(target_arch = "x86_64")]
        "uselib" => libc::SYS_uselib,
        "acct" => libc::SYS_acct,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "reboot" => libc::SYS_reboot,
        "settimeofday" => libc::SYS_settimeofday,
        "clock_settime" => libc::SYS_clock_settime,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "adjtimex" => libc::SYS_adjtimex,
        "personality" => libc::SYS_personality,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        "clone" => libc::SYS_clone,
        "clone3" => libc::SYS_clone3,
        other => panic!("the probe has no number for {other}"),
    }
}

/// `label` for the call `name` (the label up to a colon).
fn spec(label: &str) -> String {
    let name = label.split(':').next().unwrap();
    format!("{label}={}", nr(name))
}

/// Every call of the deny list, and `clone` into a new user namespace. The
/// calls that change the probe are made last: `clone` (its child's SIGCHLD
/// would stop a traced probe), then `ptrace` (the test becomes the probe's
/// tracer), then `unshare` (in a user namespace of its own, the probe is no
/// longer root in the machine's).
fn deny_matrix() -> Vec<String> {
    let last = ["ptrace", "unshare"];
    let mut labels: Vec<String> = DENIED
        .iter()
        .filter(|n| !last.contains(n))
        .map(|n| n.to_string())
        .collect();
    labels.push("clone:0x10000000".into());
    labels.extend(last.iter().map(|n| n.to_string()));
    labels
}

/// Arranges for `cmd`'s child to become `user` if given (the order in which
/// root can still change its ids), set no_new_privs as berth's apps do,
/// and install `filter` if given.
fn confine(cmd: &mut Command, filter: Option<Filter>, user: Option<(u32, u32)>) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setgroups, setresgid, setresuid, prctl,
    // and Filter::install's seccomp(2)) on memory prepared before the fork;
    // it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(filter) = &filter {
                filter.install()?;
            }
            Ok(())
        })
    }
}

/// Runs the probe on `labels` as root, under `filter` or without one.
fn run_probe(labels: &[String], filter: Option<Filter>) -> Output {
    require_root();
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c")
        .arg(PROBE)
        .args(labels.iter().map(|l| spec(l)))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null());
    confine(&mut cmd, filter, None).output().expect("python3")
}

/// What each call answered (`ok` or the errno's name), by label.
fn probe(labels: &[String], filter: Option<Filter>) -> BTreeMap<String, String> {
    let out = run_probe(labels, filter);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the probe failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(label, answer)| (label.to_string(), answer.to_string()))
        .collect();
    for label in labels {
        assert!(
            answers.contains_key(label),
            "no answer for {label}: {stdout}"
        );
    }
    answers
}

fn filter(allow: &[&str]) -> Filter {
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    Filter::new(&allow).unwrap()
}

fn labels(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

/// Every call of the deny list (and clone into a new namespace) reaches the
/// kernel without the filter and answers EPERM under it.
#[test]
fn every_denied_call_answers_eperm_under_the_filter_and_reaches_the_kernel_without_it() {
    let matrix = deny_matrix();
    for name in DENIED {
        assert!(matrix.iter().any(|l| l == name), "{name} is not probed");
    }
    let without = probe(&matrix, None);
    let under = probe(&matrix, Some(filter(&[])));
    for label in &matrix {
        assert_ne!(
            without[label], "EPERM",
            "{label} without the filter: the kernel itself refuses it, so EPERM under the filter \
             would prove nothing"
        );
        assert_eq!(under[label], "EPERM", "{label} under the filter");
    }
}

/// `allow = ["name"]` lets that call reach the kernel (it answers what it
/// answers without a filter) and no other: each name of the deny list in
/// turn. Allowing `unshare` lets `clone`'s namespace flags through too.
#[test]
fn allowing_a_call_lets_that_call_alone_reach_the_kernel() {
    let matrix = deny_matrix();
    let without = probe(&matrix, None);
    for &allowed in DENIED {
        let under = probe(&matrix, Some(filter(&[allowed])));
        for label in &matrix {
            let lifted = label == allowed || (allowed == "unshare" && label.starts_with("clone:"));
            if lifted {
                assert_eq!(
                    under[label], without[label],
                    "{label} with allow = [{allowed:?}]"
                );
            } else {
                assert_eq!(under[label], "EPERM", "{label} with allow = [{allowed:?}]");
            }
        }
    }
}

/// PTRACE_TRACEME, the brief's own example of `allow = ["ptrace"]`.
#[test]
fn allow_ptrace_lets_ptrace_traceme_through() {
    let l = labels(&["ptrace"]);
    assert_eq!(probe(&l, Some(filter(&[])))["ptrace"], "EPERM");
    assert_eq!(probe(&l, Some(filter(&["ptrace"])))["ptrace"], "ok");
}

/// Querying the personality and the values Docker lets through work;
/// changes such as ADDR_NO_RANDOMIZE or READ_IMPLIES_EXEC are refused. The
/// kernel reads 32 bits, and so does the filter: a change hidden above
/// them is still a change, and bits above them alone change nothing.
#[test]
fn personality_queries_pass_and_changes_are_refused() {
    let passing = [
        "personality:0xffffffff",
        "personality:0",
        "personality:0x0008",
        "personality:0x20000",
        "personality:0x20008",
        "personality:0x100000000",
    ];
    let refused = [
        "personality:0x0040000",
        "personality:0x0400000",
        "personality:0x0000001",
        "personality:0x100040000",
    ];
    let all = labels(&[&passing[..], &refused[..]].concat());
    let without = probe(&all, None);
    let under = probe(&all, Some(filter(&[])));
    for label in &passing {
        assert_eq!(under[*label], "ok", "{label}");
    }
    for label in &refused {
        assert_eq!(without[*label], "ok", "{label} without the filter");
        assert_eq!(under[*label], "EPERM", "{label}");
    }
    let allowed = probe(&all, Some(filter(&["personality"])));
    for label in &all {
        assert_eq!(
            allowed[label], "ok",
            "{label} with allow = [\"personality\"]"
        );
    }
}

/// `clone` with any namespace flag would do what `unshare` does: refused
/// like it. Without one, `clone` is fork and works.
#[test]
fn clone_with_a_namespace_flag_is_refused_like_unshare() {
    let flags = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
    ];
    let mut all: Vec<String> = flags.iter().map(|f| format!("clone:{f:#x}")).collect();
    all.push("clone:0".into());
    let without = probe(&all, None);
    let under = probe(&all, Some(filter(&[])));
    for label in &all {
        assert_eq!(without[label], "ok", "{label} without the filter");
    }
    assert_eq!(under["clone:0"], "ok", "a plain fork under the filter");
    for f in flags {
        let label = format!("clone:{f:#x}");
        assert_eq!(under[&label], "EPERM", "{label} under the filter");
    }
    let allowed = probe(&all, Some(filter(&["unshare"])));
    for label in &all {
        assert_eq!(allowed[label], "ok", "{label} with allow = [\"unshare\"]");
    }
}

/// clone3's flags are in memory the filter cannot read: it answers ENOSYS
/// (glibc then uses clone, whose flags it can read), unless `unshare` is
/// allowed. The kernel's own answer to the probe's empty call is EINVAL.
#[test]
fn clone3_answers_enosys_unless_unshare_is_allowed() {
    let l = labels(&["clone3"]);
    let without = probe(&l, None);
    assert_ne!(without["clone3"], "ENOSYS", "the kernel has no clone3");
    assert_eq!(probe(&l, Some(filter(&[])))["clone3"], "ENOSYS");
    assert_eq!(
        probe(&l, Some(filter(&["unshare"])))["clone3"],
        without["clone3"],
        "with allow = [\"unshare\"]"
    );
    assert_eq!(
        probe(&l, Some(filter(&["ptrace", "personality"])))["clone3"],
        "ENOSYS",
        "allowing other calls"
    );
}

/// An x32 call (the number with bit 30 set) would slip past a deny list
/// keyed on the 64-bit numbers: the filter answers EPERM. The kernel never
/// answers an x32 getpid with EPERM (ENOSYS where it has no x32, the pid
/// where it has), so EPERM is the filter's. A number above 2^31 (negative)
/// is no x32 call: it still reaches the kernel.
#[cfg(target_arch = "x86_64")]
#[test]
fn x32_calls_are_refused_with_eperm() {
    let x32 = format!("x32_getpid={:#x}", 0x4000_0000 | libc::SYS_getpid);
    let negative = format!("x32_getpid:negative={:#x}", 0xffff_ffffu32);
    let run = |f: Option<Filter>| {
        let out = run_probe_raw(&[x32.clone(), negative.clone()], f);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let without = run(None);
    assert!(!without.contains("x32_getpid EPERM"), "{without}");
    let under = run(Some(filter(&[])));
    assert!(under.contains("x32_getpid EPERM\n"), "{under}");
    assert!(under.contains("x32_getpid:negative ENOSYS\n"), "{under}");
}

/// The probe with labels given as `label=number` already.
fn run_probe_raw(specs: &[String], filter: Option<Filter>) -> Output {
    require_root();
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c")
        .arg(PROBE)
        .args(specs)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null());
    confine(&mut cmd, filter, None).output().expect("python3")
}

/// A call through the i386 ABI (`int 0x80`) fails seccompiler's
/// architecture check, which kills the process with SIGSYS. Without the
/// filter the same code returns the probe's pid (the kernel runs i386
/// calls: IA32 emulation, on in Debian's kernels).
#[cfg(target_arch = "x86_64")]
#[test]
fn i386_calls_kill_the_process_with_sigsys() {
    let int80 = vec!["int80=0".to_string()];
    let out = run_probe_raw(&int80, None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "int80 ok\n",
        "without the filter ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_probe_raw(&int80, Some(filter(&[])));
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

/// util-linux's `unshare -U true`: works as root, fails under the filter
/// saying why.
#[test]
fn unshare_command_fails_with_operation_not_permitted() {
    require_root();
    let run = |f: Option<Filter>| {
        let mut cmd = Command::new("/usr/bin/unshare");
        cmd.args(["-U", "/bin/true"]).stdin(Stdio::null());
        confine(&mut cmd, f, None).output().unwrap()
    };
    let out = run(None);
    assert!(out.status.success(), "without the filter: {out:?}");
    let out = run(Some(filter(&[])));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "under the filter: {out:?}");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    let out = run(Some(filter(&["unshare"])));
    assert!(out.status.success(), "with allow = [\"unshare\"]: {out:?}");
}

/// install does not set no_new_privs: an unprivileged process that has not
/// set it is refused (EACCES) by the kernel.
#[test]
fn install_needs_no_new_privs_from_an_unprivileged_caller() {
    require_root();
    let (uid, gid) = ensure_user(USER);
    let f = filter(&[]);
    let mut cmd = Command::new("/bin/true");
    // SAFETY: as in `confine`.
    unsafe {
        cmd.pre_exec(move || {
            let groups = [gid];
            if libc::setgroups(1, groups.as_ptr()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            f.install()
        });
    }
    let err = cmd.status().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");

    let mut cmd = Command::new("/bin/true");
    let st = confine(&mut cmd, Some(filter(&[])), Some((uid, gid)))
        .status()
        .unwrap();
    assert!(st.success(), "with no_new_privs set first: {st}");
}

/// A work directory of the tenant's user and a command that runs there as
/// that user, under the filter, with a minimal environment.
struct Tenant {
    dir: Dir,
    ids: (u32, u32),
}

impl Tenant {
    fn new() -> Tenant {
        require_root();
        let ids = ensure_user(USER);
        let dir = Dir::new();
        dir.mkdir("work");
        dir.chown("work", ids.0, ids.1);
        Tenant { dir, ids }
    }

    /// Runs `argv` under the filter; panics with its output unless it
    /// succeeds; returns its stdout.
    fn run(&self, argv: &[&str]) -> String {
        let work = self.dir.join("work");
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&work)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &work)
            .env("TMPDIR", &work)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        let out = confine(&mut cmd, Some(filter(&[])), Some(self.ids))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{argv:?} under the filter ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

#[test]
fn php_cgi_runs_under_the_filter() {
    let t = Tenant::new();
    assert!(t.run(&["/usr/bin/php-cgi", "-v"]).starts_with("PHP "));
    let script = t.dir.write(
        "work/page.php",
        r#"<?php
$f = tempnam(sys_get_temp_dir(), "s");
file_put_contents($f, json_encode(["n" => 42]));
$n = json_decode(file_get_contents($f), true)["n"];
unlink($f);
preg_match('/(\d+)/', "order 7", $m);
echo "php ", $n, " ", $m[1], " ", trim(shell_exec("echo shell")), "\n";
"#,
    );
    let out = t.run(&["/usr/bin/php-cgi", "-q", script.to_str().unwrap()]);
    assert_eq!(out, "php 42 7 shell\n");
}

#[test]
fn perl_runs_under_the_filter() {
    let t = Tenant::new();
    let out = t.run(&[
        "/usr/bin/perl",
        "-e",
        "my $pid = fork(); if (!$pid) { exit 7 } waitpid($pid, 0); \
         my @sorted = sort { $a <=> $b } (3, 1, 2); print \"perl @sorted \", $? >> 8, \"\\n\"",
    ]);
    assert_eq!(out, "perl 1 2 3 7\n");
}

/// Threads (glibc tries clone3, gets ENOSYS and uses clone), a child
/// process, a TCP exchange over loopback and a socket pair.
#[test]
fn python_threads_subprocess_and_sockets_work_under_the_filter() {
    let t = Tenant::new();
    let out = t.run(&[
        PYTHON,
        "-c",
        r#"
import socket, subprocess, threading
squares = []
threads = [threading.Thread(target=lambda i=i: squares.append(i * i)) for i in range(8)]
for th in threads: th.start()
for th in threads: th.join()
child = subprocess.run(["/bin/echo", "child"], capture_output=True, text=True, check=True).stdout.strip()
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
def serve():
    c, _ = server.accept()
    c.sendall(c.recv(16).upper())
    c.close()
th = threading.Thread(target=serve)
th.start()
client = socket.create_connection(server.getsockname())
client.sendall(b"ping")
answer = client.recv(16).decode()
th.join()
a, b = socket.socketpair()
a.send(b"x")
print("python", sum(squares), child, answer, b.recv(1).decode())
"#,
    ]);
    assert_eq!(out, "python 140 child PING x\n");
}

#[test]
fn git_init_and_commit_work_under_the_filter() {
    let t = Tenant::new();
    const GIT: &str = "/usr/bin/git";
    let id = ["-c", "user.name=T", "-c", "user.email=t@example.com"];
    t.run(&[GIT, "init", "-q", "repo"]);
    t.dir.write("work/repo/index.php", "<?php echo 1;\n");
    t.dir.chown("work/repo", t.ids.0, t.ids.1);
    t.run(&[GIT, "-C", "repo", "add", "index.php"]);
    t.run(
        &[
            &[GIT, "-C", "repo"][..],
            &id,
            &["commit", "-q", "-m", "first"],
        ]
        .concat(),
    );
    let log = t.run(&[GIT, "-C", "repo", "log", "--format=%s", "--name-only"]);
    assert_eq!(log, "first\n\nindex.php\n");
}

#[test]
fn shell_pipeline_and_getent_work_under_the_filter() {
    let t = Tenant::new();
    let out = t.run(&[
        "/bin/sh",
        "-c",
        "printf 'b\\na\\n' | sort | head -n 1; echo $((6 * 7)) | cat",
    ]);
    assert_eq!(out, "a\n42\n");
    assert!(
        t.run(&["/usr/bin/getent", "passwd", "root"])
            .starts_with("root:x:0:0:")
    );
    let hosts = t.run(&["/usr/bin/getent", "hosts", "localhost"]);
    assert!(
        hosts.contains("127.0.0.1") || hosts.contains("::1"),
        "{hosts}"
    );
}
