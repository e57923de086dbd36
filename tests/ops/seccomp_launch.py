"""Run a command under a system call filter as systemd would install it for a unit.

    python seccomp_launch.py FILTER.json COMMAND [ARG...]

FILTER.json holds {"allow": [system call names], "errno": name or null}: the listed calls are
allowed and any other fails with that errno, or kills the process (SIGSYS) when it is null, as
systemd does without `SystemCallErrorNumber=`. The filter is built with libseccomp, the library
systemd itself uses, loaded, and kept across the exec of COMMAND. Names this architecture does not
have are skipped, as systemd skips them. The file is a script, not a test module: a test runs it
as the daemon's launcher (tests/ops/test_unit_sandbox.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import sys

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000


def load(allow: list[str], errno_name: str | None) -> int:
    """Install the filter on this process; the number of allowed calls this architecture has."""
    name = ctypes.util.find_library("seccomp")
    assert name, "libseccomp is missing (Debian package libseccomp2, a dependency of systemd)"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    default = (
        SCMP_ACT_KILL_PROCESS if errno_name is None else SCMP_ACT_ERRNO | getattr(errno, errno_name)
    )
    ctx = lib.seccomp_init(default)
    assert ctx, "seccomp_init failed"
    allowed = 0
    for call in allow:
        number = lib.seccomp_syscall_resolve_name(call.encode())
        if number < 0:  # not a call of this architecture
            continue
        assert lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0) == 0, call
        allowed += 1
    assert lib.seccomp_load(ctx) == 0, "seccomp_load failed"
    return allowed


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    load(spec["allow"], spec["errno"])
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
