"""A warm sandbox worker: `python -m codevalue._worker SLOT UID [HIDDEN_JSON]`, started by the sandbox.

It sets up isolation once (namespaces, private /tmp), imports the modules programs commonly use, then
reads jobs (JSON lines) on stdin and, for each, forks a child that drops privileges and runs the program
(codevalue._child). It enforces the wall deadline from outside, kills everything the program started,
and writes one JSON result line per job on stdout. It holds no expected outputs: nothing to leak.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from codevalue import _child

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MNT_DETACH = 2
MS_NOEXEC = 8
ST_RELATIME, MS_RELATIME = 4096, 1 << 21  # statvfs and mount(2) spell this one differently
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}.get(platform.machine(), 155)
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
RESULT_FD = 3
WRITABLE_DIRS = ("/tmp", "/var/tmp", "/run/lock", "/dev/shm")  # the world-writable places
NEW_ROOT = "/tmp"  # where the new root is built (in our mount namespace only), before pivot_root
STASH = "/.cv-imports"  # in the new root, 0700: import paths below /tmp, bound again under each fresh /tmp
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "nsswitch.conf", "localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")
CHANNEL_LIMIT = 256 * 2**20  # bytes a child may send back; more is a flood and gets it killed

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def _mount_tmpfs(target: str, mode: str = "1777") -> None:
    options = f"size=512m,mode={mode}".encode()
    _check(_libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options),
           f"mount tmpfs on {target}")


def _bind(source: str, target: str, read_only: bool = True) -> None:
    _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None), f"bind {target}")
    if read_only:  # keeping the mount's nodev/noexec/atime flags: a user namespace may not clear them
        flags = os.statvfs(target).f_flag
        kept = flags & (MS_NODEV | MS_NOEXEC | 1024 | 2048)  # and MS_NOATIME, MS_NODIRATIME
        kept |= MS_RELATIME if flags & ST_RELATIME else 0
        _check(_libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept, None),
               f"read-only {target}")


class _Mounts:
    """Our private view of the filesystem. The import paths (the standard library, site-packages, this
    package without its data) are opened before anything is covered; `pivot` then builds a new root that
    holds only them, /usr and a few device files; `cover` puts a fresh tmpfs over a writable directory
    (after every dirty program) and binds back the import paths below it, read-only.

    Why: a program must read nothing of the host but what Python needs to run (no checkouts, data, label
    outputs, git history, sockets), and may write only to tmpfs mounts that are replaced between programs.
    """

    def __init__(self, hidden: list[str]):
        needed = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)} - {"/"}
        needed |= {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
        package = os.path.dirname(os.path.realpath(__file__))
        checkout = os.path.dirname(package)  # on PYTHONPATH so the worker finds us; only the package is needed
        if checkout in needed and not checkout.endswith(("site-packages", "dist-packages")):
            needed = (needed - {checkout}) | {package}
        # Outermost paths only: binding a directory binds everything below it.
        self.needed = [p for p in sorted(needed) if not any(p.startswith(q + "/") for q in needed)]
        self.sources = {p: f"/proc/self/fd/{os.open(p, os.O_PATH)}" for p in self.needed}  # before covering
        self.hidden = [os.path.realpath(h) for h in hidden if os.path.exists(h)]

    def blocked_tops(self) -> list[str]:
        """The outermost directories on the way to an import path that others may not traverse."""
        tops = []
        for path in self.needed:
            current = "/"
            for part in path.strip("/").split("/"):
                current = os.path.join(current, part)
                if not os.stat(current).st_mode & 0o001:
                    tops.append(current)
                    break
        return sorted(set(tops))

    def _under(self, paths: list[str], top: str) -> list[str]:
        return [p for p in paths if p.startswith(top.rstrip("/") + "/")]

    def kept_names(self, top: str) -> set[str]:
        return {p[len(top.rstrip("/")) + 1:].split("/")[0] for p in self._under(self.needed, top)}

    def cover(self, top: str, mode: str) -> None:
        _mount_tmpfs(top, mode=mode)
        for path in self._under(self.needed, top):
            os.makedirs(path, exist_ok=True)
            _bind(self.sources[path], path)
        self.hide(self._under(self.hidden, top))

    def hide(self, paths: list[str], prefix: str = "") -> list[str]:
        """Cover files (with /dev/null) and directories (with an empty tmpfs) that hold expected outputs."""
        for path in paths:
            if os.path.isdir(prefix + path):
                _mount_tmpfs(prefix + path, mode="0755")
            elif os.path.isfile(prefix + path):
                _check(_libc.mount(b"/dev/null", (prefix + path).encode(), None, MS_BIND, None), f"hide {path}")
        return paths

    def pivot(self, is_root: bool, uid: int) -> None:
        """Make a tmpfs holding only what programs need the root of our mount namespace."""
        new = NEW_ROOT
        _mount_tmpfs(new, mode="0755")
        for name in SYSTEM_DIRS:  # shared libraries and executables, as on the host (/lib -> usr/lib ...)
            host = "/" + name
            if os.path.islink(host):
                os.symlink(os.readlink(host), new + host)
            elif os.path.isdir(host):
                os.mkdir(new + host)
                _bind(host, new + host)
        os.makedirs(new + "/etc")
        for name in ETC_FILES:
            if os.path.isfile("/etc/" + name):
                with open("/etc/" + name, "rb") as f, open(f"{new}/etc/{name}", "wb") as g:
                    g.write(f.read())
        with open(new + "/etc/passwd", "w") as f:
            f.write(f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{uid}:{uid}:sandbox:/tmp:/bin/sh\n")
        with open(new + "/etc/group", "w") as f:
            f.write("root:x:0:\n")
        with open(new + "/etc/hosts", "w") as f:
            f.write("127.0.0.1 localhost\n::1 localhost\n")
        os.makedirs(new + "/dev")
        for name in DEVICES:
            open(f"{new}/dev/{name}", "w").close()
            _bind("/dev/" + name, f"{new}/dev/{name}", read_only=False)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{new}/dev/{name}")
        os.makedirs(new + "/proc")
        if is_root:  # a proc of our own in which the sandbox uid sees only its own processes
            _check(_libc.mount(b"proc", (new + "/proc").encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                               b"hidepid=invisible"), "mount proc")
        else:  # a user namespace may not mount a proc for the host's pid namespace: the host's, as is
            _bind("/proc", new + "/proc", read_only=False)
        for d in WRITABLE_DIRS:
            os.makedirs(new + d, exist_ok=True)
        os.makedirs(new + STASH, mode=0o700)
        os.mkdir(new + STASH + "/mqueue", mode=0o700)
        for i, path in enumerate(self.needed):
            if any(path == s or path.startswith(s + "/") for s in ("/usr",)):
                target = new + path  # already there, under the /usr bind
            elif any(path.startswith(d + "/") for d in WRITABLE_DIRS):
                target = f"{new}{STASH}/{i}"  # bound under the fresh tmpfs by cover(); from here
                os.makedirs(target)
                _bind(self.sources[path], target)
                self.hide([h[len(path):] for h in self._under(self.hidden, path)], prefix=target)
                self.sources[path] = f"{STASH}/{i}"
                continue
            else:
                target = new + path
                os.makedirs(target, exist_ok=True)
                _bind(self.sources[path], target)
            self.hide(self._under(self.hidden, path), prefix=new)
        os.makedirs(new + "/.old")
        _check(_libc.syscall(SYS_PIVOT_ROOT, new.encode(), (new + "/.old").encode()), "pivot_root")
        os.chdir("/")
        _check(_libc.umount2(b"/.old", MNT_DETACH), "detach the old root")
        os.rmdir("/.old")
        _check(_libc.mount(None, b"/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID, None), "read-only root")
        global MQUEUE
        MQUEUE = STASH + "/mqueue"
        _mount_mqueue()
        for d in WRITABLE_DIRS:
            self.cover(d, "1777")


class _MemoryCgroup:
    """A memory cgroup of this worker that every program's child joins, so that all processes of one
    program together stay under --memory-mb (RLIMIT_AS bounds each process only). cgroup v2 (memory.max)
    where our cgroup may enable the memory controller, else v1 (memory.limit_in_bytes). All files are
    opened here, before the filesystem view shrinks; the child joins by writing 0 to `join_fd`.
    Raises OSError where neither is possible (not root, no memory controller, read-only cgroupfs)."""

    def __init__(self, name: str):
        self.version, self.path = self._make(name)
        v2 = self.version == 2
        self.limit_fd = os.open(f"{self.path}/{'memory.max' if v2 else 'memory.limit_in_bytes'}", os.O_WRONLY)
        swap = f"{self.path}/{'memory.swap.max' if v2 else 'memory.memsw.limit_in_bytes'}"
        self.swap_fd = os.open(swap, os.O_WRONLY) if os.path.exists(swap) else None
        self.events_fd = os.open(f"{self.path}/{'memory.events' if v2 else 'memory.oom_control'}", os.O_RDONLY)
        self.join_fd = os.open(f"{self.path}/cgroup.procs", os.O_WRONLY)
        self.parent_fd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)  # for remove()
        self.limit = 0
        self.oom_kills()  # readable, or raise now

    @staticmethod
    def _make(name: str) -> tuple[int, str]:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
        errors = []
        for _, controllers, path in lines:  # v2 first, where the memory controller can be had
            if controllers == "":
                parent = f"{_cgroup2_root()}{path.rstrip('/')}"
                try:
                    with open(f"{parent}/cgroup.subtree_control") as f:
                        if "memory" not in f.read().split():
                            with open(f"{parent}/cgroup.subtree_control", "w") as g:
                                g.write("+memory")
                    os.makedirs(f"{parent}/{name}", exist_ok=True)
                    return 2, f"{parent}/{name}"
                except OSError as e:
                    errors.append(f"v2: {e}")
        for _, controllers, path in lines:
            if "memory" in controllers.split(","):
                parent = f"/sys/fs/cgroup/memory{path.rstrip('/')}"
                os.makedirs(f"{parent}/{name}", exist_ok=True)
                return 1, f"{parent}/{name}"
        raise OSError(f"no memory cgroup ({'; '.join(errors) or 'no memory controller'})")

    def set_limit(self, limit: int) -> None:
        if limit == self.limit:
            return
        swap = 0 if self.version == 2 else limit  # v1 counts memory + swap, and wants it >= the limit
        if self.swap_fd is not None:
            try:  # raising: first the swap limit (lowering: fails now, done after the memory limit)
                os.write(self.swap_fd, str(swap).encode())
            except OSError:
                pass
        os.write(self.limit_fd, str(limit).encode())
        if self.swap_fd is not None:
            os.write(self.swap_fd, str(swap).encode())
        self.limit = limit

    def oom_kills(self) -> int:
        """How many processes the kernel has killed in this cgroup for going over the limit, ever."""
        text = os.pread(self.events_fd, 4096, 0).decode()
        return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill ")), 0)

    def remove(self) -> None:
        """Called on the way out, when the cgroup's path is no longer in our view: by descriptor."""
        try:
            os.rmdir(os.path.basename(self.path), dir_fd=self.parent_fd)
        except OSError:
            pass


def _cgroup2_root() -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    raise OSError("no cgroup2 mount")


CGROUP: _MemoryCgroup | None = None  # set by setup_isolation where available


def setup_isolation(slot: int, uid: int, hidden: list[str] = ()) -> dict:
    """Enter new namespaces once for this worker; report what is in force (shown to users verbatim)."""
    global MOUNTS, CGROUP
    info = {"uid_drop": False, "namespaces": [], "private_tmp": False, "fresh_ipc": False,
            "cleanup": "process group",
            "rlimits": ["AS", "CPU", "FSIZE", "NOFILE", "CORE"], "notes": []}
    is_root = os.geteuid() == 0
    try:  # before the filesystem view shrinks: the cgroup files are opened here
        CGROUP = _MemoryCgroup(f"codevalue-{uid}")
        info["memory"] = (f"cgroup v{CGROUP.version} memory limit per program: all its processes together "
                          "stay under --memory-mb (OOM kill -> memory_exceeded); RLIMIT_AS per process too")
        info["cgroup"] = CGROUP.path
    except OSError as e:
        info["memory"] = ("RLIMIT_AS per process only: a program's processes together may use up to "
                          f"{'max_processes' if is_root else 'any number of'} times --memory-mb")
        info["notes"].append(f"no memory cgroup ({e}): memory is limited per process, not per program")
    try:
        if is_root:
            _unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
        else:
            me, my_gid = os.getuid(), os.getgid()
            _unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {me} 1"), ("gid_map", f"0 {my_gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            info["namespaces"].append("user")
        info["namespaces"] += ["mount", "network", "ipc", "uts"]
        info["fresh_ipc"] = True  # a fresh IPC namespace whenever a program left IPC objects (see _clean_ipc)
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        MOUNTS = _Mounts(list(hidden))  # its descriptors must belong to the new mount namespace
        try:
            MOUNTS.pivot(is_root, uid)
            info["root"] = "allowlist"
            info["visible"] = ["/usr (read-only; /bin, /lib... link into it)", *MOUNTS.needed,
                               "/dev/{" + ",".join(DEVICES) + "}",
                               "/etc/{passwd,group,hosts," + ",".join(ETC_FILES) + "}",
                               "/proc (own processes only)" if is_root else "/proc (the host's: every process)",
                               "/tmp, /var/tmp, /run/lock, /dev/shm (private tmpfs)"]
        except OSError as e:  # the host's tree, with the denylist hiding of old
            info["root"] = "host"
            info["notes"].append(f"no private root ({e}): programs see the host's filesystem with the "
                                 "sandbox uid's permissions, except private /tmp-like dirs and hidden files")
            blocked = MOUNTS.blocked_tops() if is_root else []
            for d in WRITABLE_DIRS:
                if os.path.isdir(d):
                    MOUNTS.cover(d, "1777")
            for top in blocked:
                if top in MOUNTS.needed:
                    info["notes"].append(f"{top} is not readable by the sandbox uid; imports from it fail")
                MOUNTS.cover(top, "0755")
            covered = [*WRITABLE_DIRS, *blocked]
            MOUNTS.hide([h for h in MOUNTS.hidden if not any(h.startswith(c + "/") for c in covered)])
        info["private_tmp"] = True
        info["hidden"] = MOUNTS.hidden
    except OSError as e:
        info["root"] = "host"
        info["notes"].append(f"namespaces unavailable ({e}): programs see the host's filesystem with the "
                             "caller's permissions, its /tmp, and can reach the network")
    if is_root:
        info["uid_drop"] = True
        info["uid"] = uid
        info["rlimits"].append("NPROC")
    else:
        info["notes"].append("not root: programs run as the caller's user (no uid drop, no process limit)")
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
        info["cleanup"] = "process group + subreaper sweep"
        if is_root:
            info["cleanup"] += " + kill(-1) as the sandbox uid"
    return info


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _drop_privileges(iso: dict) -> None:
    """Become the sandbox uid for good; called by the child harness right before program code runs."""
    if iso["uid_drop"]:
        os.setgroups([])
        os.setgid(iso["uid"])
        os.setuid(iso["uid"])
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _enter_child(job: dict, write_fd: int, workdir: str, iso: dict) -> None:
    """Lock down the freshly forked child (everything but the uid drop) before any program code runs."""
    if CGROUP is not None:
        os.write(CGROUP.join_fd, b"0")  # this process and all it starts: one memory budget
    os.setsid()
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.dup2(write_fd, RESULT_FD)
    os.closerange(RESULT_FD + 1, 65536)
    os.chdir(workdir)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-size write fails with EFBIG instead
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    cpu = job["cpu_seconds"]  # computed by codevalue.limits
    mem = job["vm_base"] + job["memory_mb"] * 2**20
    limits = [(resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_CORE, 0),
              (resource.RLIMIT_FSIZE, job["output_limit"] + 1), (resource.RLIMIT_NOFILE, 256)]
    if iso["uid_drop"]:
        limits.append((resource.RLIMIT_NPROC, job["max_processes"]))
    for which, value in limits:
        hard = value + 1 if which == resource.RLIMIT_CPU else value
        resource.setrlimit(which, (value, hard))
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                       "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1",
                       "OPENBLAS_NUM_THREADS": "1"})


class _LineReader:
    """Split a byte stream into lines in linear time (a long line grows in one buffer). A line longer than
    `max_line` is never buffered: `oversize` is set and the rest of the stream is ignored."""

    def __init__(self, max_line: int) -> None:
        self.partial = bytearray()
        self.max_line = max_line
        self.total = 0
        self.oversize = False

    def feed(self, chunk: bytes) -> list[bytes | bytearray]:
        self.total += len(chunk)
        if self.oversize:
            return []
        lines: list[bytes | bytearray] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if self.partial:
                self.partial += chunk[start:end]
                lines.append(self.partial)
                self.partial = bytearray()
            else:
                lines.append(chunk[start:end])
            start = end + 1
        self.partial += chunk[start:]
        if len(self.partial) > self.max_line or any(len(line) > self.max_line for line in lines):
            self.partial, self.oversize = bytearray(), True
            return []
        return lines


def _read_events(read_fd: int, pid: int, deadline: float, max_events: int,
                 max_line: int) -> tuple[list[dict], bool, bool]:
    """Collect the child's event lines until it exits or the deadline passes. A line longer than any honest
    event, or more than CHANNEL_LIMIT bytes in all, is a flood: reading stops and the child gets killed."""
    pidfd = os.pidfd_open(pid)
    reader, events = _LineReader(max_line), []
    timed_out = flooded = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd, pidfd], [], [], left)
            if not ready:
                timed_out = True
                break
            chunk = os.read(read_fd, 1 << 16) if read_fd in ready else b""
            if chunk:
                events += _parse(reader.feed(chunk), max_events - len(events), max_line)
                if reader.total > CHANNEL_LIMIT or reader.oversize:
                    flooded = True
                    break
                continue
            # EOF (every writer gone) or the child exited: drain what it left in the pipe, then stop
            os.set_blocking(read_fd, False)
            try:
                while reader.total < CHANNEL_LIMIT and not reader.oversize and (chunk := os.read(read_fd, 1 << 16)):
                    events += _parse(reader.feed(chunk), max_events - len(events), max_line)
            except BlockingIOError:
                pass
            flooded = reader.oversize
            break
    finally:
        os.close(pidfd)
    return events, timed_out, flooded


def _parse(lines: list[bytes], room: int, max_line: int) -> list[dict]:
    """Decode event lines; at most `room` are kept (the parent needs one per test, plus load and done).
    Anything but a flat event of known keys is dropped (see _child.parse_event); missing events count
    against the program."""
    events: list[dict] = []
    for line in lines:
        if len(events) >= room:
            break
        event = _child.parse_event(line, max_line)
        if event is not None:
            events.append(event)
    return events


def _sweep(iso: dict) -> int:
    """Kill whatever the program left behind. As subreaper every orphan is our child, so ECHILD from
    waitpid proves nothing survives. Returns how many leftover processes were reaped."""
    reaped = 0
    for _ in range(200):
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
            continue
        if iso["uid_drop"]:
            helper = os.fork()
            if helper == 0:  # kill(-1) from the sandbox uid reaches all its processes and nothing else
                try:
                    os.setuid(iso["uid"])
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(helper, 0)
        for pid in _children():
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        time.sleep(0.002)
    return reaped


def _children() -> list[int]:
    pids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def _clean(workdir: str, iso: dict) -> None:
    """Nothing a program wrote survives into the next one. The usual work directory (a few small files)
    is deleted directly; anything else makes the tmpfs mount dirty, and it is replaced by a fresh one
    (no walking of a tree a program may have made a million entries or levels deep)."""
    if iso["private_tmp"]:
        entries = list(os.scandir(workdir))
        if len(entries) <= 16 and all(e.is_file(follow_symlinks=False) for e in entries):
            for e in entries:
                os.unlink(e.path)
            os.rmdir(workdir)
        for d in WRITABLE_DIRS:
            if os.path.isdir(d) and set(os.listdir(d)) - MOUNTS.kept_names(d):
                _check(_libc.umount2(d.encode(), MNT_DETACH), f"unmount {d}")
                MOUNTS.cover(d, "1777")
        return
    try:
        shutil.rmtree(workdir)
    except (OSError, RecursionError):  # a tree deeper than Python's recursion limit
        subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=True, timeout=60)


SYSV_IPC = ("/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem")


def _clean_ipc() -> None:
    """No IPC object survives into the next program: if this one left any (SysV shared memory, message
    queues, semaphores, POSIX message queues), we move to a fresh IPC namespace, and the old one dies with
    its objects. Checking costs three small reads; a namespace per program would cost ~1 ms each."""
    dirty = False
    for path in SYSV_IPC:  # a header line, then one line per object of our IPC namespace
        with open(path, "rb") as f:
            dirty = dirty or f.read().count(b"\n") > 1
    if dirty or (MQUEUE and os.listdir(MQUEUE)):
        _unshare(CLONE_NEWIPC)
        if MQUEUE:
            _check(_libc.umount2(MQUEUE.encode(), MNT_DETACH), "unmount mqueue")
            _mount_mqueue()


def _mount_mqueue() -> None:
    """The POSIX message queues of our (current) IPC namespace, visible to us alone (STASH is 0700)."""
    _check(_libc.mount(b"mqueue", MQUEUE.encode(), b"mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
           "mount mqueue")


MQUEUE = ""  # where _mount_mqueue mounts, when we have a root of our own


def run_job(job: dict, iso: dict) -> dict:
    workdir = tempfile.mkdtemp(prefix="cv-")
    if iso["uid_drop"]:
        os.chown(workdir, iso["uid"], iso["uid"])
    job["vm_base"] = _vm_size()
    if CGROUP is not None:
        CGROUP.set_limit(job["memory_mb"] * 2**20)
        oom_before = CGROUP.oom_kills()
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            _enter_child(job, write_fd, workdir, iso)
            _child.run(job, RESULT_FD, drop_privileges=lambda: _drop_privileges(iso))
        finally:
            os._exit(71)
    os.close(write_fd)
    events, timed_out, flooded = _read_events(read_fd, pid, start + job["deadline"], len(job["inputs"]) + 3,
                                              _child.max_event_bytes(job["output_limit"]))
    os.close(read_fd)
    try:
        os.killpg(pid, signal.SIGKILL)  # the whole group, whether or not the program finished
    except (ProcessLookupError, PermissionError):
        pass
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    leftovers = _sweep(iso)
    _clean(workdir, iso)
    if iso["fresh_ipc"]:
        _clean_ipc()
    return {
        "oom_kills": CGROUP.oom_kills() - oom_before if CGROUP is not None else 0,
        "events": events,
        "deadline_hit": timed_out,
        "flooded": flooded,
        "exit_code": os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "wall_seconds": wall,
        "leftover_processes": leftovers,
    }


def main() -> None:
    slot, uid = int(sys.argv[1]), int(sys.argv[2])
    hidden = json.loads(sys.argv[3]) if len(sys.argv) > 3 else []
    out = sys.stdout.buffer
    from codevalue import compare  # noqa: F401  (used by the child; imported once here)

    exec(_child.APPS_PREAMBLE, {})  # import numpy & co. once, so every fork starts warm
    gc.collect()
    gc.freeze()  # keep the garbage collector from touching (and so copying) the warm heap in every child
    iso = setup_isolation(slot, uid, hidden)
    out.write(json.dumps({"ready": True, "isolation": iso}).encode() + b"\n")
    out.flush()
    broken = False
    for line in sys.stdin.buffer:
        job = json.loads(line)
        del line  # it holds the nonce, and this frame is below the program's (see _child._seal_completion)
        try:
            result = run_job(job, iso)
        except Exception as e:  # an infrastructure failure (fork refused, cleanup failed): say so
            result = {"infra_error": f"{type(e).__name__}: {e}"}
            broken = True
        result["id"] = job["id"]
        out.write(json.dumps(result).encode() + b"\n")  # ASCII: a lone surrogate cannot break it
        out.flush()
        if broken:  # state we could not clean up must not reach the next program: the parent starts a new worker
            break
    if CGROUP is not None:
        CGROUP.remove()
    if broken:
        sys.exit(3)


if __name__ == "__main__":
    main()
