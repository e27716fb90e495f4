//! The seccomp filter every app gets unless `seccomp = "off"`: a deny list of
//! what web apps never need, answered with EPERM (not a kill: apps fail
//! clearly, "Operation not permitted"), with `allow = [...]` letting named
//! calls through.
//!
//! The supervisor builds a [`Filter`] per app before the fork; the child sets
//! `no_new_privs` and calls [`Filter::install`] last, once its view of the
//! machine is built (mounting and `unshare` are among what the filter
//! refuses). The filter stays on the process and on everything it forks and
//! executes; nothing can take it off.
//!
//! # What is refused, and what `allow` lifts
//! Every call below answers EPERM; `allow = ["name"]` lets exactly that call
//! reach the kernel again (where the kernel's own checks still apply: a
//! tenant's app is no root). Only these names can be allowed
//! ([`is_denied`]).
//!
//! - **Tracing and reading other processes**: `ptrace`, `process_vm_readv`,
//!   `process_vm_writev`, `pidfd_getfd` (takes another process's open
//!   descriptors). They read and write the memory of any process of
//!   the same user: another app of the tenant, its CGI scripts. Debuggers,
//!   `strace` and crash reporters that inspect themselves need them.
//! - **Kernel code**: `kexec_load`, `kexec_file_load` (boot another kernel),
//!   `init_module`, `finit_module`, `delete_module` (kernel modules). Root's
//!   alone anyway; refused so that even a process that became root cannot.
//! - **Kernel attack surface**: `bpf`, `perf_event_open`, `userfaultfd`,
//!   `io_uring_setup`, `io_uring_enter`, `io_uring_register`. Large
//!   interfaces that local privilege escalations keep starting from
//!   (userfaultfd makes kernel races easy to win); io_uring's operations are
//!   not system calls, so no filter sees them. Runtimes that try io_uring
//!   (libuv, hence Node.js) fall back to threads when it is refused.
//! - **Keyrings**: `keyctl`, `add_key`, `request_key`. Kernel state that
//!   namespaces do not separate (Docker's reason for refusing them too), with
//!   a long record of bugs; web apps do not use them (Kerberos and ecryptfs
//!   setups do).
//! - **Mounts and namespaces**: `mount`, `umount2`, `pivot_root`, `unshare`,
//!   `setns`, the new mount API (`open_tree`, `move_mount`, `fsopen`,
//!   `fsconfig`, `fsmount`, `fspick`, `mount_setattr`), and
//!   `open_by_handle_at` (opens a file by its handle, past every directory's
//!   permissions: the "shocker" container escape). The view berth built for
//!   the app stays as built, and no app gets root in a user namespace of its
//!   own, the door to code (netfilter, file systems) that most recent local
//!   exploits went through. `clone` with a namespace flag (`CLONE_NEWNS`,
//!   `NEWUTS`, `NEWIPC`, `NEWUSER`, `NEWPID`, `NEWNET`, `NEWCGROUP`) is
//!   refused like `unshare`, since it does the same; `clone3` answers ENOSYS
//!   (its flags are in memory, which a filter cannot read), so glibc falls
//!   back to `clone`, as under Docker's profile. `allow = ["unshare"]` lifts
//!   all three: `unshare`, `clone`'s namespace flags and `clone3`.
//! - **Clocks**: `settimeofday`, `clock_settime`, `clock_adjtime`,
//!   `adjtimex`. Setting the machine's clock is root's anyway; the last two
//!   are refused even when they only read (the mode is in memory), so
//!   `ntp_gettime` and `adjtimex --print` fail under the filter.
//! - **The machine**: `acct` (process accounting), `swapon`, `swapoff`,
//!   `reboot`; on x86, `modify_ldt` (16-bit code segments, an old exploit
//!   aid) and `uselib` (an obsolete way to load a library).
//! - **Personality**: only changes are refused, such as `ADDR_NO_RANDOMIZE`
//!   (a child without address randomisation, for an exploit) or
//!   `READ_IMPLIES_EXEC`. What Docker's default profile lets through passes:
//!   the query `personality(0xffffffff)` that glibc and others make, and 0
//!   (`PER_LINUX`), `0x0008` (`PER_LINUX32`), `0x20000` (`UNAME26`),
//!   `0x20008`. `allow = ["personality"]` lets every value through.
//!
//! # Other architectures' calls
//! The filter is built for the running architecture (x86_64 or aarch64;
//! elsewhere [`Filter::new`] says seccomp is not supported, and the app needs
//! `seccomp = "off"`). On x86_64:
//! - calls made through the x32 ABI (the number with bit 30 set, `nr |
//!   0x40000000`) answer EPERM, whatever their number: the deny list is keyed
//!   on the 64-bit numbers, which x32 calls would slip past;
//! - calls of the i386 ABI (`int 0x80`, a 32-bit program) **kill the
//!   process** with SIGSYS ("Bad system call"): seccompiler's architecture
//!   check. A 32-bit program therefore cannot run with the filter on; it dies
//!   at its first system call, not halfway.
//!
//! # Cost
//! The program (263 instructions on x86_64 with nothing allowed) is a prefix
//! for the x32 range and `clone3`, then seccompiler's list of the denied
//! numbers. The kernel (5.11 and later) works out once, at install, which
//! numbers the program allows whatever their arguments, and lets those
//! through without running it: only the denied calls, `clone` (fork,
//! threads), `clone3` and `personality` run the program.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The system calls the filter refuses, by name: `allow` may name only these.
pub const DENIED: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "open_by_handle_at",
    "pidfd_getfd",
    "modify_ldt",
    "uselib",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "personality",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// Whether `name` is a call the filter refuses (what `allow` may name).
pub fn is_denied(name: &str) -> bool {
    DENIED.contains(&name)
}

/// A compiled filter, built before the fork.
#[derive(Clone)]
pub struct Filter {
    /// The BPF program, ready for seccomp(2): installing it allocates nothing.
    program: Vec<libc::sock_filter>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .finish()
    }
}

impl Filter {
    /// The deny list minus `allow` (each name must be in [`DENIED`]: else
    /// Err naming it and saying that only the calls in the deny list can be
    /// allowed). Built for the running architecture (x86_64, aarch64; others:
    /// Err saying seccomp is not supported on it).
    pub fn new(allow: &[String]) -> Result<Filter, String> {
        for name in allow {
            if !is_denied(name) {
                return Err(not_denied(name));
            }
        }
        let Some((arch, audit_arch)) = running_arch() else {
            return Err(format!(
                "seccomp is not supported on {}: berth builds its filter for x86_64 and \
                 aarch64 (set seccomp = \"off\" for apps on this machine)",
                std::env::consts::ARCH
            ));
        };
        let allowed = |name: &str| allow.iter().any(|a| a == name);

        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for &name in DENIED.iter().filter(|&&name| !allowed(name)) {
            let Some(nr) = number(name) else { continue };
            let chain = match name {
                "personality" => vec![personality_changes()?],
                _ => Vec::new(),
            };
            rules.insert(nr, chain);
        }
        let namespaces = !allowed("unshare");
        if namespaces {
            rules.insert(libc::SYS_clone, namespace_flags()?);
        }
        let body: BpfProgram = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .and_then(BpfProgram::try_from)
        .map_err(|e| format!("building the seccomp filter: {e}"))?;

        let mut program = prefix(audit_arch, arch == TargetArch::x86_64, namespaces);
        program.extend(body.iter().map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        }));
        if program.len() > libc::BPF_MAXINSNS as usize {
            return Err(format!(
                "the seccomp filter has {} instructions, more than the kernel's {}",
                program.len(),
                libc::BPF_MAXINSNS
            ));
        }
        Ok(Filter { program })
    }

    /// Installs the filter on the calling thread. Callable in a forked child
    /// of a multithreaded parent: it makes one seccomp(2) call on the
    /// prebuilt program and allocates nothing. The caller sets
    /// `no_new_privs` first (or has CAP_SYS_ADMIN): without either the
    /// kernel answers EACCES; install does not set it itself.
    pub fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            // new() keeps the program within BPF_MAXINSNS (4096).
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: seccomp(2) copies the program from `prog`, which points
        // into `self.program` and lives across the call; the kernel does not
        // write to it. syscall() is a plain system call (it sets errno on
        // failure), safe between fork and exec.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
                0 as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The error for an `allow` of a call the filter does not refuse.
fn not_denied(name: &str) -> String {
    let hint = if name == "clone" || name == "clone3" {
        "; allow \"unshare\" to let clone's namespace flags and clone3 through"
    } else {
        ""
    };
    format!(
        "{name:?} is not a call the seccomp filter refuses: only the calls in its deny \
         list can be allowed ({}){hint}",
        DENIED.join(", ")
    )
}

/// `AUDIT_ARCH_*` of linux/audit.h: the `arch` of `struct seccomp_data`.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// The architecture the filter is built for, if berth builds one for it.
fn running_arch() -> Option<(TargetArch, u32)> {
    if cfg!(target_arch = "x86_64") {
        Some((TargetArch::x86_64, AUDIT_ARCH_X86_64))
    } else if cfg!(target_arch = "aarch64") {
        Some((TargetArch::aarch64, AUDIT_ARCH_AARCH64))
    } else {
        None
    }
}

/// `name`'s number on this architecture, for the names in [`DENIED`]; None
/// for a call this architecture does not have (then there is nothing to
/// refuse) and for any other name.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn number(name: &str) -> Option<i64> {
    let nr = match name {
        "ptrace" => libc::SYS_ptrace,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "kexec_load" => libc::SYS_kexec_load,
        #[cfg(not(all(target_arch = "aarch64", target_env = "musl")))]
        "kexec_file_load" => libc::SYS_kexec_file_load,
        // The libc crate lacks the constant for musl on aarch64; the
        // kernel's number is asm-generic's.
        #[cfg(all(target_arch = "aarch64", target_env = "musl"))]
        "kexec_file_load" => 294,
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
        // Takes another process's descriptor: as much as ptrace gives.
        "pidfd_getfd" => libc::SYS_pidfd_getfd,
        // x86 only: local descriptor tables (old 16-bit code), and
        // loading a library the old way.
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
        _ => return None,
    };
    Some(nr)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn number(_name: &str) -> Option<i64> {
    None
}

/// `personality`'s argument (an `unsigned int`: the low 32 bits are what the
/// kernel reads) is none of the values that change nothing dangerous.
fn personality_changes() -> Result<SeccompRule, String> {
    const PASS: [u64; 5] = [0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];
    let conditions = PASS
        .iter()
        .map(|&value| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, value)
                .map_err(|e| format!("building the seccomp filter: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions).map_err(|e| format!("building the seccomp filter: {e}"))
}

/// `clone`'s flags (its first argument on x86_64 and aarch64 alike; the
/// kernel reads the low 32 bits) hold a namespace flag: one rule per flag,
/// any of which refuses the call.
fn namespace_flags() -> Result<Vec<SeccompRule>, String> {
    const FLAGS: [libc::c_int; 7] = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
    ];
    FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| format!("building the seccomp filter: {e}"))
        })
        .collect()
}

/// The x32 ABI's bit in a call's number (x86_64).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// What seccompiler's filter cannot say, run before it: on x86_64, x32 calls
/// (numbers from `X32_SYSCALL_BIT` up to 2^31; above, the number is negative
/// and the kernel answers ENOSYS itself) answer EPERM; `clone3` answers
/// ENOSYS unless namespaces are allowed. Calls of another architecture fall
/// through to seccompiler's check, which kills. Empty when there is nothing
/// to check.
fn prefix(audit_arch: u32, x32: bool, clone3: bool) -> Vec<libc::sock_filter> {
    const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // Offsets in struct seccomp_data.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let op = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    if !x32 && !clone3 {
        return Vec::new();
    }

    let mut p = vec![op(LD_ABS, ARCH), op(JEQ, audit_arch), op(LD_ABS, NR)];
    let arch_check = 1;
    let mut to_eperm = None;
    let mut to_enosys = None;
    if x32 {
        // Below the bit: on to the next check (skip one).
        p.push(libc::sock_filter {
            jf: 1,
            ..op(JGE, X32_SYSCALL_BIT)
        });
        // At or above 2^31: on; else EPERM (patched below).
        to_eperm = Some(p.len());
        p.push(op(JGE, 0x8000_0000));
    }
    if clone3 {
        to_enosys = Some(p.len());
        p.push(op(JEQ, libc::SYS_clone3 as u32));
    }
    let done = p.len();
    p.push(op(JA, 0));
    let eperm = p.len();
    if to_eperm.is_some() {
        p.push(op(RET, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32));
    }
    let enosys = p.len();
    if to_enosys.is_some() {
        p.push(op(RET, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    }
    let body = p.len();

    // Jumps count from the next instruction; the prefix is far shorter than
    // the 255 a conditional jump can skip.
    let offset = |from: usize, to: usize| (to - from - 1) as u8;
    p[arch_check].jf = offset(arch_check, body);
    if let Some(at) = to_eperm {
        p[at].jf = offset(at, eperm);
    }
    if let Some(at) = to_enosys {
        p[at].jt = offset(at, enosys);
    }
    p[done].k = u32::from(offset(done, body));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowing(names: &[&str]) -> Result<Filter, String> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Filter::new(&names)
    }

    #[test]
    fn allow_of_a_call_outside_the_deny_list_is_refused_naming_it() {
        for name in ["nope", "read", "clone3", "PTRACE"] {
            let e = allowing(&["ptrace", name]).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "\"{name}\" is not a call the seccomp filter refuses"
                )),
                "{e}"
            );
            assert!(
                e.contains(
                    "only the calls in its deny list can be allowed (ptrace, process_vm_readv,"
                ),
                "{e}"
            );
            assert!(!is_denied(name));
        }
        let e = allowing(&["clone3"]).unwrap_err();
        assert!(
            e.ends_with("; allow \"unshare\" to let clone's namespace flags and clone3 through"),
            "{e}"
        );
        assert!(DENIED.iter().all(|name| is_denied(name)));
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn every_denied_call_has_a_number_of_its_own_here() {
        let mut seen = BTreeMap::new();
        for name in DENIED {
            let nr = number(name).unwrap_or_else(|| panic!("{name} has no number"));
            if let Some(other) = seen.insert(nr, name) {
                panic!("{name} and {other} share the number {nr}");
            }
        }
        assert_eq!(number("read"), None);
    }

    /// What the program compares with for equality: call numbers, and the
    /// arch and argument values (none of which is the number of a call of
    /// the deny list, or clone's, or clone3's).
    fn compared(filter: &Filter) -> Vec<u32> {
        let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        filter
            .program
            .iter()
            .filter(|i| i.code == jeq)
            .map(|i| i.k)
            .collect()
    }

    /// Allowing a call takes it out of the program, and only it (with
    /// `unshare`, clone and clone3 go too); allowing everything still
    /// builds a filter.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn an_allowed_call_leaves_the_program_and_the_others_stay() {
        let nr = |name: &str| number(name).unwrap() as u32;
        let namespaces = [libc::SYS_clone as u32, libc::SYS_clone3 as u32];
        let full = allowing(&[]).unwrap();
        assert!(full.program.len() <= libc::BPF_MAXINSNS as usize);
        let all = compared(&full);
        for name in DENIED {
            assert!(all.contains(&nr(name)), "{name} is not in the program");
        }
        for n in namespaces {
            assert!(all.contains(&n), "{n} is not in the program");
        }
        for name in DENIED {
            let left = compared(&allowing(&[name]).unwrap());
            assert!(
                !left.contains(&nr(name)),
                "allowing {name} leaves it in the program"
            );
            for n in namespaces {
                assert_eq!(
                    left.contains(&n),
                    *name != "unshare",
                    "{n} with allow = [{name:?}]"
                );
            }
            for other in DENIED.iter().filter(|o| *o != name) {
                assert!(
                    left.contains(&nr(other)),
                    "allowing {name} takes {other} out"
                );
            }
        }
        let none = compared(&allowing(DENIED).unwrap());
        for name in DENIED {
            assert!(!none.contains(&nr(name)), "{name} with everything allowed");
        }
    }
}
