"""First program inside the code sandbox (see sandbox.py); stdlib only, passed to `python -c`.

argv: isolated (0/1), work dir, work dir size in MiB, max processes, setpriv path, python path,
entry (the file to run: runner.py or solution.py).
stdin: one JSON line {"files": {name: text}}; after it, the judge's channel (or end of input).

When isolated it runs as PID 1 of fresh user, mount, network and PID namespaces and, before the
untrusted code starts: makes every mount read-only, puts a private size-limited tmpfs on the work
dir, and execs the entry through `setpriv` with no capabilities (so the code cannot undo the
mounts). In both modes it writes the files, caps the number of processes and execs
`python -I <entry>`, stdin left as it is. No secret is handed on: the verdict is the judge's.
"""

import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
# A remount inside a user namespace must keep the flags the outer namespace set (they are locked).
KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
              "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}

libc = ctypes.CDLL(None, use_errno=True)


def mount(source, target, fstype, flags, data=None):
    encode = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {target}: {os.strerror(errno)}")


def mount_points():
    """(mount point, options) of every mount, parents first (from /proc/self/mountinfo)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")  # \040 etc.
            points.append((target, fields[5].split(",")))
    return sorted(points, key=lambda p: p[0].count("/"))


def isolate_filesystem(work_dir: str, work_dir_mb: int) -> None:
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for target, options in mount_points():
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options:
            flags |= KEPT_FLAGS.get(option, 0)
        try:
            mount(None, target, None, flags)
        except OSError:
            if target == "/":
                raise
            # e.g. /proc/sys: already read-only to this namespace, or not remountable at all
    mount("tmpfs", work_dir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={work_dir_mb}m,mode=0700")


def main() -> None:
    isolated, work_dir, work_dir_mb, max_processes, setpriv, python, entry = sys.argv[1:8]
    request = json.loads(sys.stdin.buffer.readline())
    if isolated == "1":
        isolate_filesystem(work_dir, int(work_dir_mb))
    for name, text in request["files"].items():
        with open(os.path.join(work_dir, name), "w") as f:
            f.write(text)
    os.chdir(work_dir)
    resource.setrlimit(resource.RLIMIT_NPROC, (int(max_processes),) * 2)
    command = [python, "-I", entry]
    if isolated == "1":
        command = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--", *command]
    os.execv(command[0], command)


main()
