"""A seccomp filter for instances: classic BPF built with ``struct``, installed through ctypes.

No third-party library: the runtime stays dependency-free and the filter is a few hundred bytes,
built once when the zygote imports this module (each forked instance only pays for the prctl).

The filter is a deny list on top of the sandbox's namespaces, capabilities and read-only mounts:
it closes the kernel interfaces a function has no business with (mounts, namespaces, modules,
tracing, keyrings, bpf, io_uring, ...) and returns EPERM, so well-behaved libraries that probe
for them see an ordinary "not permitted" instead of dying. Program shape (x86_64)::

    ld  arch            ; a foreign arch (i386 via int 0x80) would renumber every syscall
    jne AUDIT_ARCH_X86_64 -> KILL
    ld  nr
    jge 0x40000000 -> EPERM   ; x32 ABI numbers alias the x86_64 ones
    jeq clone3 -> ENOSYS      ; libc then falls back to clone, whose flags we *can* inspect
    jeq clone  -> check args[0] & CLONE_NEW* -> EPERM or ALLOW
    jeq mount  -> EPERM ... (one jeq per denied syscall)
    ALLOW

The zygote gets the same program with two exceptions (``build_filter(zygote=True)``), because its
instances must still unshare a mount namespace and mount their private /tmp before they install
the full filter on top: unshare is allowed for exactly CLONE_NEWNS, and mount for exactly the
flags of a fresh tmpfs (MS_NOSUID | MS_NODEV: no bind, remount, move or propagation change).
Seccomp cannot read the strings a pointer argument points to, so the filesystem type is not
checked; what else such a mount can do is bounded by the zygote's namespaces (bwrap.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

# BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20    # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x05 | 0x10 | 0x00       # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00       # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x05 | 0x40 | 0x00      # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06 | 0x00              # BPF_RET | BPF_K

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16                 # little-endian: the low 32 bits of args[0] come first
_OFF_ARG0_HI = 20
_OFF_ARG3_LO = 16 + 3 * 8
_OFF_ARG3_HI = 16 + 3 * 8 + 4

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 \
    | 0x40000000 | 0x00000080

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
TMPFS_MOUNT_FLAGS = MS_NOSUID | MS_NODEV   # runtime/harden.py mounts /tmp and /dev/shm so

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

DENIED = (
    "mount", "umount2", "pivot_root", "chroot", "ptrace", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "bpf", "keyctl", "add_key", "request_key",
    "reboot", "swapon", "swapoff", "setns", "unshare", "open_tree", "move_mount", "fsopen",
    "fsmount", "fspick", "fsconfig", "mount_setattr", "perf_event_open", "process_vm_readv",
    "process_vm_writev", "acct", "userfaultfd", "open_by_handle_at", "name_to_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "pidfd_getfd", "kcmp",
    "lookup_dcookie", "quotactl", "syslog", "vhangup",
)

# Numbers from asm/unistd_64.h (x86_64) and asm-generic/unistd.h (aarch64).
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "clone": 56, "ptrace": 101, "syslog": 103, "vhangup": 153, "pivot_root": 155,
        "chroot": 161, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
        "reboot": 169, "init_module": 175, "delete_module": 176, "quotactl": 179,
        "lookup_dcookie": 212, "kexec_load": 246, "add_key": 248, "request_key": 249,
        "keyctl": 250, "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303,
        "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
        "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320,
        "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438,
        "mount_setattr": 442,
    },
    "aarch64": {
        "lookup_dcookie": 18, "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51,
        "vhangup": 58, "quotactl": 60, "acct": 89, "unshare": 97, "kexec_load": 104,
        "init_module": 105, "delete_module": 106, "syslog": 116, "ptrace": 117, "reboot": 142,
        "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224,
        "swapoff": 225, "perf_event_open": 241, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270,
        "process_vm_writev": 271, "kcmp": 272, "finit_module": 273, "bpf": 280,
        "userfaultfd": 282, "kexec_file_load": 294, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435,
        "pidfd_getfd": 438, "mount_setattr": 442,
    },
}
_AUDIT_ARCH = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}

_INSN = struct.Struct("=HBBI")    # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }


class SeccompError(OSError):
    """The filter could not be built (unknown arch) or installed (the kernel refused)."""


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return _INSN.pack(code, jt, jf, k)


def _allow_only(nr: int, off_lo: int, off_hi: int, value: int) -> list[bytes]:
    """Syscall ``nr`` is allowed when its 64-bit argument (at ``off_lo``/``off_hi``) equals
    ``value``, denied with EPERM otherwise; any other syscall jumps over these 7 insns."""
    eperm = SECCOMP_RET_ERRNO | errno.EPERM
    return [
        _insn(_JEQ_K, nr, jf=6),
        _insn(_LD_W_ABS, off_hi),
        _insn(_JEQ_K, 0, jf=2),           # high half must be 0
        _insn(_LD_W_ABS, off_lo),
        _insn(_JEQ_K, value, jt=1),
        _insn(_RET_K, eperm),
        _insn(_RET_K, SECCOMP_RET_ALLOW),
    ]


def build_filter(machine: str | None = None, zygote: bool = False) -> bytes:
    """The BPF program for ``machine`` (``uname -m``; default: this one) as sock_filter bytes;
    ``zygote``: the zygote's variant (see the module docstring)."""
    machine = machine or os.uname().machine
    if machine not in SYSCALLS:
        raise SeccompError(errno.ENOTSUP, f"no seccomp syscall table for architecture {machine}")
    nrs = SYSCALLS[machine]
    eperm = SECCOMP_RET_ERRNO | errno.EPERM
    exempt = ("unshare", "mount") if zygote else ()
    denied = [nrs[name] for name in DENIED if name not in exempt]
    prog = [
        _insn(_LD_W_ABS, _OFF_ARCH),
        _insn(_JEQ_K, _AUDIT_ARCH[machine], jt=1),
        _insn(_RET_K, SECCOMP_RET_KILL_PROCESS),
        _insn(_LD_W_ABS, _OFF_NR),
    ]
    if machine == "x86_64":
        prog += [_insn(_JGE_K, X32_SYSCALL_BIT, jf=1), _insn(_RET_K, eperm)]
    prog += [
        _insn(_JEQ_K, nrs["clone3"], jf=1),
        _insn(_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS),
        # clone: jump over the flag check unless this is clone
        _insn(_JEQ_K, nrs["clone"], jf=4),
        _insn(_LD_W_ABS, _OFF_ARG0_LO),
        _insn(_JSET_K, CLONE_NEW_MASK, jf=1),
        _insn(_RET_K, eperm),
        _insn(_RET_K, SECCOMP_RET_ALLOW),
    ]
    if zygote:
        prog += _allow_only(nrs["unshare"], _OFF_ARG0_LO, _OFF_ARG0_HI, CLONE_NEWNS)
        prog += _allow_only(nrs["mount"], _OFF_ARG3_LO, _OFF_ARG3_HI, TMPFS_MOUNT_FLAGS)
    # One jeq per denied number: on a match fall through to the shared EPERM at the end.
    for i, nr in enumerate(denied):
        remaining = len(denied) - i - 1
        prog.append(_insn(_JEQ_K, nr, jt=remaining + 1))
    prog += [_insn(_RET_K, SECCOMP_RET_ALLOW), _insn(_RET_K, eperm)]
    if len(prog) > 4096:  # BPF_MAXINSNS
        raise SeccompError(errno.E2BIG, "seccomp program too long")
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong)

try:
    # Built once in the zygote; forked instances inherit the bytes.
    DEFAULT_FILTER: bytes | None = build_filter()
except SeccompError:
    DEFAULT_FILTER = None
_DEFAULT_BUF = ctypes.create_string_buffer(DEFAULT_FILTER or b"", len(DEFAULT_FILTER or b""))
_DEFAULT_PROG = _SockFprog(len(DEFAULT_FILTER or b"") // _INSN.size, ctypes.addressof(_DEFAULT_BUF))


def set_no_new_privs() -> None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")


def install(program: bytes | None = None) -> None:
    """Set no_new_privs and install ``program`` (default: the deny list) on the calling thread.

    Called in a freshly forked, single-threaded instance, so the filter covers the whole process
    and everything it forks or execs. Raises SeccompError when the kernel refuses.
    """
    if program is None and DEFAULT_FILTER is None:
        raise SeccompError(errno.ENOTSUP, f"seccomp is not supported on {os.uname().machine}")
    set_no_new_privs()
    if program is None:
        fprog = _DEFAULT_PROG  # prepared in the zygote: nothing to allocate per instance
    else:
        buf = ctypes.create_string_buffer(program, len(program))
        fprog = _SockFprog(len(program) // _INSN.size, ctypes.addressof(buf))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompError(err, f"PR_SET_SECCOMP: {os.strerror(err)}")
