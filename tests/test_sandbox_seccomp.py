"""Syscalls made from inside the sandbox: the seccomp filter refuses the dangerous ones, and
everyday Python (threads, subprocesses, numpy) keeps working under it."""

from __future__ import annotations

import errno
import json
import os
import platform
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from relayrl.envs.sandbox import SandboxLimits, SandboxUnavailable, run_python
from relayrl.envs.sandbox.seccomp import ARCHITECTURES, filter_program
from relayrl.envs.sandbox.staging import memory_file

REPO = Path(__file__).resolve().parents[1]

LIMITS = SandboxLimits(wall_s=10.0, cpu_s=5)
MACHINE = platform.machine()
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
# Typed again from the kernel's syscall tables, apart from the filter's own, so that a wrong
# number there shows here as a call that was not refused.
SYSCALL_NUMBERS = {
    "x86_64": {
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "clone3": 435,
        "bpf": 321, "perf_event_open": 298, "keyctl": 250, "add_key": 248, "request_key": 249,
        "userfaultfd": 323, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsmount": 432,
        "fsconfig": 431, "fspick": 433, "mount_setattr": 442, "kexec_load": 246,
        "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "clone": 56, "getpid": 39,
    },
    "aarch64": {
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "clone3": 435,
        "bpf": 280, "perf_event_open": 241, "keyctl": 219, "add_key": 217, "request_key": 218,
        "userfaultfd": 282, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsmount": 432,
        "fsconfig": 431, "fspick": 433, "mount_setattr": 442, "kexec_load": 104,
        "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "clone": 220, "getpid": 172,
    },
}  # fmt: skip
# Arguments the kernel would answer otherwise than EPERM/ENOSYS (EFAULT, EBADF, success...),
# so the errno seen can only come from the filter.
PROBES = {
    "io_uring_setup": (1, 0),
    "io_uring_enter": (-1, 0, 0, 0, 0, 0),
    "io_uring_register": (-1, 0, 0, 0),
    "clone3": (0, 0),
    "bpf": (5, 0, 0),
    "perf_event_open": (0, 0, -1, -1, 0),
    "keyctl": (0, -1, 0),  # KEYCTL_GET_KEYRING_ID of the thread keyring
    "add_key": (0, 0, 0, 0, 0),
    "request_key": (0, 0, 0, 0),
    "userfaultfd": (1,),  # UFFD_USER_MODE_ONLY, which needs no privilege
    "ptrace": (0, 0, 0, 0),  # PTRACE_TRACEME
    "process_vm_readv": ("self", 0, 0, 0, 0, 0),
    "process_vm_writev": ("self", 0, 0, 0, 0, 0),
    "unshare": (CLONE_NEWUSER,),
    "setns": (-1, 0),
    "mount": (0, 0, 0, 0, 0),
    "umount2": (0, 0),
    "pivot_root": (0, 0),
    "chroot": (0,),
    "move_mount": (-1, 0, -1, 0, 0),
    "open_tree": (-1, 0, 0),
    "fsopen": (0, 0),
    "fsmount": (-1, 0, 0),
    "fsconfig": (-1, 0, 0, 0, 0),
    "fspick": (-1, 0, 0),
    "mount_setattr": (-1, 0, 0, 0, 0),
    "kexec_load": (0, 0, 0, 0),
    "kexec_file_load": (-1, -1, 0, 0, 0),
    "init_module": (0, 0, 0),
    "finit_module": (-1, 0, 0),
    "delete_module": (0, 0),
    "clone": (CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
}
UNIMPLEMENTED = {"io_uring_setup", "io_uring_enter", "io_uring_register", "clone3"}

needs_known_architecture = pytest.mark.skipif(
    MACHINE not in SYSCALL_NUMBERS, reason=f"no syscall table for {MACHINE} in this test"
)


def probe(calls: dict[str, tuple[int | str, ...]]) -> dict[str, str]:
    """Each syscall's result inside the sandbox: the errno's name, or "returned N"."""
    numbers = SYSCALL_NUMBERS[MACHINE]
    code = f"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
seen = {{}}
for name, number, args in {[(name, numbers[name], args) for name, args in calls.items()]!r}:
    args = [os.getpid() if arg == "self" else arg for arg in args]
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(arg) for arg in args))
    seen[name] = errno.errorcode[ctypes.get_errno()] if result == -1 else f"returned {{result}}"
print(json.dumps(seen))
"""
    result = run_python(code, LIMITS)
    assert result.status == "ok", result.stderr
    return json.loads(result.stdout)


@needs_known_architecture
def test_dangerous_syscalls_are_refused_inside() -> None:
    expected = {name: "ENOSYS" if name in UNIMPLEMENTED else "EPERM" for name in PROBES}
    assert probe(PROBES) == expected


@needs_known_architecture
def test_the_filter_is_installed_in_the_program_itself() -> None:
    result = run_python("print(open('/proc/self/status').read())", LIMITS)
    status = dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)
    assert status["Seccomp"] == "2"
    assert status["NoNewPrivs"] == "1"


@pytest.mark.skipif(MACHINE != "x86_64", reason="the x32 and i386 ABIs exist only on x86_64")
def test_syscalls_through_other_abis_are_refused() -> None:
    x32_getpid = 0x40000000 | 39
    code = f"""
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
print(libc.syscall({x32_getpid}), errno.errorcode[ctypes.get_errno()])
"""
    assert run_python(code, LIMITS).stdout == "-1 EPERM\n"
    # `int 0x80` enters the i386 table, where 20 is getpid: the filter kills the process.
    int80 = """
import ctypes, mmap
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))  # mov eax, 20; int 0x80; ret
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
print("pid", ctypes.CFUNCTYPE(ctypes.c_int)(address)())
"""
    result = run_python(int80, LIMITS)
    assert (result.status, result.exit_code, result.stdout) == ("killed", -signal.SIGSYS, "")


def test_personality_may_be_read_but_not_changed() -> None:
    code = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
for persona in (0xFFFFFFFF, 0, 0x0040000):  # query, PER_LINUX, ADDR_NO_RANDOMIZE
    result = libc.personality(persona)
    print(result, errno.errorcode.get(ctypes.get_errno()) if result == -1 else "")
"""
    assert run_python(code, LIMITS).stdout == "0 \n0 \n-1 EPERM\n"


def test_everyday_python_still_works() -> None:
    code = """
import asyncio, concurrent.futures, os, sqlite3, subprocess, sys, tempfile, threading
child = subprocess.run([sys.executable, "-c", "print('child', 6 * 7)"], capture_output=True)
print(child.stdout.decode().strip())
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    print("threads", sum(pool.map(lambda n: n * n, range(10))))
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
async def shell():
    process = await asyncio.create_subprocess_exec("/bin/echo", "async", stdout=-1)
    return (await process.communicate())[0].decode().strip()
print(asyncio.run(shell()))
with tempfile.NamedTemporaryFile("w+", dir=".") as scratch:
    scratch.write("kept"); scratch.flush(); print(open(scratch.name).read())
print(sqlite3.connect(":memory:").execute("select 40 + 2").fetchone()[0])
"""
    result = run_python(code, LIMITS)
    assert result.status == "ok", result.stderr
    lines = "child 42\nthreads 285\nfork 7\nasync\nkept\n42\n"
    assert result.stdout == lines


def test_numpy_still_works() -> None:
    present = run_python("import numpy", LIMITS)
    if present.status != "ok":
        pytest.skip(f"numpy is not installed for the sandbox's /usr/bin/python3: {present.stderr}")
    code = "import numpy as np\nm = np.arange(9.0).reshape(3, 3)\nprint(int((m @ m.T).trace()))"
    result = run_python(code, LIMITS)
    assert (result.status, result.stdout) == ("ok", "204\n"), result.stderr


@pytest.mark.parametrize("machine", sorted(ARCHITECTURES))
def test_each_architecture_gets_a_filter_the_kernel_accepts(machine: str) -> None:
    program = filter_program(machine)
    assert len(program) % 8 == 0  # whole struct sock_filter entries
    assert len(program) // 8 <= 4096  # the kernel's BPF_MAXINSNS


def test_an_architecture_without_a_table_cannot_sandbox() -> None:
    with pytest.raises(SandboxUnavailable, match="riscv64"):
        filter_program("riscv64")


@pytest.mark.skipif(os.geteuid() != 0, reason="an outer bwrap without a user namespace needs root")
@needs_known_architecture
def test_the_container_profile_leaves_the_sandbox_working(tmp_path: Path) -> None:
    """docker/seccomp-sandbox.json replaces seccomp=unconfined in the manifests: under the
    calls it refuses (those with a number in our table), bwrap still builds the sandbox."""
    profile = json.loads((REPO / "docker" / "seccomp-sandbox.json").read_text())
    numbers = ARCHITECTURES[MACHINE].numbers
    refused = [name for rule in profile["syscalls"] for name in rule["names"] if name in numbers]
    assert {"setns", "keyctl", "bpf", "io_uring_setup", "fsopen"} <= set(refused)
    outer = [(0x20, 0, 0, 0)]  # load the syscall number
    for name in refused:
        outer += [(0x15, 0, 1, numbers[name]), (0x06, 0, 0, 0x00050000 | errno.EPERM)]
    outer += [(0x06, 0, 0, 0x7FFF0000)]
    fd = memory_file("container-profile", b"".join(struct.pack("<HBBI", *op) for op in outer))
    program = tmp_path / "program.py"
    program.write_text("import os\nprint('inside', os.getpid())\n")
    sandbox = [sys.executable, "-m", "relayrl.cli", "sandbox", "run", str(program)]
    try:
        completed = subprocess.run(
            ["bwrap", "--dev-bind", "/", "/", "--seccomp", str(fd), "--", *sandbox],
            pass_fds=[fd],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(fd)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["stdout"] == "inside 2\n"
