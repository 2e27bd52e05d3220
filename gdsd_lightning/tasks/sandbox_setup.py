"""First program inside the code sandbox (see sandbox.py); stdlib only, passed to `python -I -S -c`.

argv: isolation (0 none, 1 read-only host, 2 own root), work dir, work dir size in MiB, max
processes, setpriv path, python path, entry (the file to run: runner.py or solution.py).
stdin: one JSON line {"files": {name: text}, "visible": [path, ...]}; after it, the judge's
channel (or end of input).

Isolated, it runs as PID 1 of fresh user, mount, network and PID namespaces and, before the
untrusted code starts, either (2) builds a root of its own, a tmpfs holding read-only binds of
`visible` (the interpreter, its standard library, setpriv and their shared libraries), a fresh
/proc of its PID namespace, /dev/{null,zero,full,random,urandom} and a private size-limited tmpfs
work dir, pivots into it and detaches the host's root; or (1) makes every mount of the host
read-only and puts the work dir tmpfs on it. Then it execs the entry through `setpriv` with no
capabilities (so the code cannot undo the mounts). In every mode it writes the files, caps the
number of processes and execs `python -I <entry>`, stdin left as it is.
"""

import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
# A remount inside a user namespace must keep the flags the outer namespace set (they are locked).
KEPT_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
              (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
DEVICES = ("null", "zero", "full", "random", "urandom")
HIDDEN = ("site-packages", "dist-packages")     # inside a visible standard library: installed packages
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

libc = ctypes.CDLL(None, use_errno=True)


def checked(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source, target, fstype, flags, data=None):
    encode = lambda s: None if s is None else s.encode()  # noqa: E731
    checked(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def read_only(target: str) -> None:
    """Remount the mount at `target` read-only, keeping its locked flags."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for statvfs_flag, mount_flag in KEPT_FLAGS:
        if os.statvfs(target).f_flag & statvfs_flag:
            flags |= mount_flag
    mount(None, target, None, flags)


def isolate_filesystem(work_dir: str, work_dir_mb: int) -> None:
    """Fallback (1): every mount of the host read-only, the work dir a tmpfs."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4].encode().decode("unicode_escape") for line in f]   # \040 etc.
    for target in sorted(targets, key=lambda t: t.count("/")):                        # parents first
        try:
            read_only(target)
        except OSError:
            if target == "/":
                raise
            # e.g. /proc/sys: already read-only to this namespace, or not remountable at all
    mount("tmpfs", work_dir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={work_dir_mb}m,mode=0700")


def expose(root: str, path: str, depth: int = 0) -> None:
    """Make `path` resolve under `root` as it does on the host: its symlinks recreated, the file or
    directory they lead to bound read-only."""
    if depth > 40:
        raise OSError(f"too many symlinks on the way to {path}")
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if os.path.islink(current):
            link = root + current
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(os.readlink(current), link)
            target = os.path.join(os.path.dirname(current), os.readlink(current), os.path.relpath(path, current))
            return expose(root, os.path.normpath(target), depth + 1)
    bind(path, root + path)
    for hidden in HIDDEN if os.path.isdir(path) else ():
        if os.path.isdir(os.path.join(path, hidden)):
            mount("tmpfs", os.path.join(root + path, hidden), "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")


def bind(source: str, target: str, writable: bool = False) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND)
    if not writable:
        read_only(target)


def own_root(work_dir: str, work_dir_mb: int, visible: list) -> None:
    """(2): a tmpfs root with only `visible`, /proc, /dev and the work dir; the host's root detached."""
    pivot_root = SYS_PIVOT_ROOT[os.uname().machine]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = work_dir                                     # the new root is mounted over the work dir
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in visible:
        expose(root, path)
    for device in DEVICES:
        bind(f"/dev/{device}", f"{root}/dev/{device}", writable=True)
    os.mkdir(f"{root}/proc")
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + work_dir)
    mount("tmpfs", root + work_dir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={work_dir_mb}m,mode=0700")
    os.chdir(root)
    checked(libc.syscall(pivot_root, b".", b"."), "pivot_root")
    checked(libc.umount2(b".", MNT_DETACH), "umount the host's root")
    os.chdir("/")
    read_only("/")


def main() -> None:
    isolation, work_dir, work_dir_mb, max_processes, setpriv, python, entry = sys.argv[1:8]
    request = json.loads(sys.stdin.buffer.readline())
    if isolation == "2":
        own_root(work_dir, int(work_dir_mb), request["visible"])
    elif isolation == "1":
        isolate_filesystem(work_dir, int(work_dir_mb))
    for name, text in request["files"].items():
        with open(os.path.join(work_dir, name), "w") as f:
            f.write(text)
    os.chdir(work_dir)
    resource.setrlimit(resource.RLIMIT_NPROC, (int(max_processes),) * 2)
    command = [python, "-I", entry]
    if isolation != "0":
        command = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--", *command]
    os.execv(command[0], command)


main()
