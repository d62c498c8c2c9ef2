"""The seccomp filter bwrap installs right before it execs the program: a deny list in cBPF.

The kernel surface a sandboxed program has no use for (io_uring, bpf, perf, keyrings, ptrace,
the mount family, module and kexec loading, new namespaces) answers with an error instead.
"""

from __future__ import annotations

import errno
import functools
import platform
import struct
from dataclasses import dataclass

from relayrl.envs.sandbox.staging import memory_file
from relayrl.envs.sandbox.tools import SandboxUnavailable

# Classic BPF opcodes (linux/filter.h) and seccomp return actions (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_NR_OFFSET = 0
_ARCH_OFFSET = 4
_ARG0_LOW_OFFSET = 16  # both supported architectures are little-endian

_X32_SYSCALL_BIT = 0x40000000
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
# CLONE_NEWNET; clone()'s flags are its first argument on both architectures.
_CLONE_NAMESPACE_FLAGS = 0x7E020000
# personality() may only be asked (0xffffffff) or set to plain Linux: other personas turn off
# address-space randomisation or make reads imply exec for the programs the caller execs.
_PERSONALITY_QUERY = 0xFFFFFFFF
_PER_LINUX = 0

# Names with no number on an architecture (x86's port I/O on arm64) are skipped there.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "process_madvise",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "open_tree_attr",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr", "unshare", "setns",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "fanotify_init", "lookup_dcookie", "quotactl", "quotactl_fd",
    "syslog", "acct", "swapon", "swapoff", "reboot", "iopl", "ioperm", "uselib",
)  # fmt: skip
# ENOSYS rather than EPERM so that callers fall back: liburing users to plain I/O, glibc's
# clone3 (which cBPF cannot inspect, its flags live in memory) to clone, checked below.
UNIMPLEMENTED_SYSCALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register", "clone3")


@dataclass(frozen=True)
class Architecture:
    audit_arch: int  # AUDIT_ARCH_* as the kernel puts it in seccomp_data.arch
    numbers: dict[str, int]
    has_x32_abi: bool


# Numbers from the kernel's syscall tables; those from 424 on are shared by every architecture.
_SHARED = {
    "pidfd_getfd": 438, "process_madvise": 440, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "mount_setattr": 442,
    "quotactl_fd": 443, "open_tree_attr": 467,
}  # fmt: skip
_X86_64 = {
    "clone": 56, "ptrace": 101, "syslog": 103, "pivot_root": 155, "chroot": 161, "acct": 163,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172,
    "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
    "lookup_dcookie": 212, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "unshare": 272, "perf_event_open": 298, "fanotify_init": 300, "open_by_handle_at": 304,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "uselib": 134, "personality": 135,
}  # fmt: skip
_AARCH64 = {
    "lookup_dcookie": 18, "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51,
    "quotactl": 60, "acct": 89, "unshare": 97, "kexec_load": 104, "init_module": 105,
    "delete_module": 106, "syslog": 116, "ptrace": 117, "reboot": 142, "add_key": 217,
    "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224, "swapoff": 225,
    "perf_event_open": 241, "fanotify_init": 262, "open_by_handle_at": 265, "setns": 268,
    "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "finit_module": 273,
    "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294, "personality": 92,
}  # fmt: skip
ARCHITECTURES = {
    "x86_64": Architecture(0xC000003E, {**_SHARED, **_X86_64}, has_x32_abi=True),
    "aarch64": Architecture(0xC00000B7, {**_SHARED, **_AARCH64}, has_x32_abi=False),
}


class UnsupportedArchitecture(SandboxUnavailable):
    """No syscall table for this machine, so no seccomp filter can be built."""


def filter_program(machine: str) -> bytes:
    """The filter for `machine` (`uname -m`) as the raw `struct sock_filter` array bwrap reads."""
    arch = ARCHITECTURES.get(machine)
    if arch is None:
        raise UnsupportedArchitecture(f"no seccomp syscall table for {machine}")
    errno_eperm = _RET_ERRNO | errno.EPERM
    errno_enosys = _RET_ERRNO | errno.ENOSYS
    program = [
        # A syscall made through another ABI (int 0x80 on x86_64, AArch32) would bypass the
        # numbers below, so any other architecture ends the process.
        (_LD_W_ABS, 0, 0, _ARCH_OFFSET),
        (_JEQ_K, 1, 0, arch.audit_arch),
        (_RET_K, 0, 0, _RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _NR_OFFSET),
    ]
    if arch.has_x32_abi:
        program += [(_JGE_K, 0, 1, _X32_SYSCALL_BIT), (_RET_K, 0, 0, errno_eperm)]
    for name in DENIED_SYSCALLS:
        if name in arch.numbers:
            program += _return_if(arch.numbers[name], errno_eperm)
    for name in UNIMPLEMENTED_SYSCALLS:
        program += _return_if(arch.numbers[name], errno_enosys)
    program += [
        (_JEQ_K, 0, 5, arch.numbers["personality"]),
        (_LD_W_ABS, 0, 0, _ARG0_LOW_OFFSET),
        (_JEQ_K, 2, 0, _PERSONALITY_QUERY),
        (_JEQ_K, 1, 0, _PER_LINUX),
        (_RET_K, 0, 0, errno_eperm),
        (_RET_K, 0, 0, _RET_ALLOW),
        (_JEQ_K, 0, 3, arch.numbers["clone"]),
        (_LD_W_ABS, 0, 0, _ARG0_LOW_OFFSET),
        (_JSET_K, 0, 1, _CLONE_NAMESPACE_FLAGS),
        (_RET_K, 0, 0, errno_eperm),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in program)


def _return_if(number: int, action: int) -> list[tuple[int, int, int, int]]:
    return [(_JEQ_K, 0, 1, number), (_RET_K, 0, 0, action)]


@functools.cache
def host_filter_program() -> bytes:
    return filter_program(platform.machine())


def filter_memfd() -> int:
    """A memory file holding this host's filter, for bwrap's --seccomp; the caller closes it."""
    return memory_file("relayrl-seccomp", host_filter_program())
