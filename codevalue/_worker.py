"""A warm sandbox worker: `python -m codevalue._worker SLOT UID_BASE [HIDDEN_JSON]`, started by the sandbox.

It sets up isolation once (namespaces, private /tmp), imports the modules programs commonly use, then
reads jobs (JSON lines) on stdin and, for each, forks a child that drops privileges and runs the program
(codevalue._child). It enforces the wall deadline from outside, kills everything the program started,
and writes one JSON result line per job on stdout. It holds no expected outputs: nothing to leak.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
RESULT_FD = 3
WRITABLE_DIRS = ("/tmp", "/var/tmp", "/run/lock", "/dev/shm")  # the world-writable places
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


class _Mounts:
    """Our private view of the filesystem, rebuilt at will: a directory is covered by an empty tmpfs, then
    the import paths below it (the standard library, site-packages, this package) are bound back
    read-only, and the problem files below it are hidden again.

    Why: programs may write only to fresh tmpfs mounts over the world-writable directories, which are
    replaced after every program; and Python often lives below a directory the sandbox uid may not enter
    (e.g. /root/.pyenv under a 0700 /root) or below /tmp itself (a clone in /tmp/...).
    """

    def __init__(self, hidden: list[str]):
        needed = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
        needed |= {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
        # Outermost paths only: binding a directory binds everything below it.
        self.needed = [p for p in sorted(needed) if not any(p.startswith(q + "/") for q in needed)]
        self.fds = {p: os.open(p, os.O_PATH) for p in self.needed}  # held before anything is covered
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
            _check(_libc.mount(f"/proc/self/fd/{self.fds[path]}".encode(), path.encode(), None,
                               MS_BIND | MS_REC, None), f"bind {path}")
            _libc.mount(None, path.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        self.hide(self._under(self.hidden, top))

    def hide(self, paths: list[str]) -> list[str]:
        """Cover files (with /dev/null) and directories (with an empty tmpfs) that hold expected outputs."""
        for path in paths:
            if os.path.isdir(path):
                _mount_tmpfs(path, mode="0755")
            elif os.path.isfile(path):
                _check(_libc.mount(b"/dev/null", path.encode(), None, MS_BIND, None), f"hide {path}")
        return paths


MOUNTS: _Mounts  # set by setup_isolation


def setup_isolation(slot: int, uid_base: int, hidden: list[str] = ()) -> dict:
    """Enter new namespaces once for this worker; report what is in force (shown to users verbatim)."""
    global MOUNTS
    info = {"uid_drop": False, "namespaces": [], "private_tmp": False, "cleanup": "process group",
            "rlimits": ["AS", "CPU", "FSIZE", "NOFILE", "CORE"], "notes": []}
    is_root = os.geteuid() == 0
    try:
        if is_root:
            _unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
        else:
            uid, gid = os.getuid(), os.getgid()
            _unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            info["namespaces"].append("user")
        info["namespaces"] += ["mount", "network", "ipc", "uts"]
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        MOUNTS = _Mounts(list(hidden))  # its descriptors must belong to the new mount namespace
        blocked = MOUNTS.blocked_tops() if is_root else []
        for d in WRITABLE_DIRS:
            if os.path.isdir(d):
                MOUNTS.cover(d, "1777")
        info["private_tmp"] = True
        for top in blocked:
            if top in MOUNTS.needed:
                info["notes"].append(f"{top} is not readable by the sandbox uid; imports from it fail")
            MOUNTS.cover(top, "0755")
        covered = [*WRITABLE_DIRS, *blocked]
        MOUNTS.hide([h for h in MOUNTS.hidden if not any(h.startswith(c + "/") for c in covered)])
        info["hidden"] = MOUNTS.hidden
    except OSError as e:
        info["notes"].append(f"namespaces unavailable ({e}); programs can reach the network and /tmp")
    if is_root:
        info["uid_drop"] = True
        info["uid"] = uid_base + slot
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
    cpu = math.ceil(job["deadline"]) + 1
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
    """Split a byte stream into lines in linear time (a long line is kept as a list of chunks)."""

    def __init__(self) -> None:
        self.partial: list[bytes] = []
        self.total = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        self.total += len(chunk)
        if b"\n" not in chunk:
            self.partial.append(chunk)
            return []
        first, *rest = chunk.split(b"\n")
        lines = [b"".join(self.partial) + first, *rest[:-1]]
        self.partial = [rest[-1]] if rest[-1] else []
        return lines


def _read_events(read_fd: int, pid: int, deadline: float, max_events: int) -> tuple[list[dict], bool, bool]:
    """Collect the child's event lines until it exits or the deadline passes."""
    pidfd = os.pidfd_open(pid)
    reader, events = _LineReader(), []
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
                events += _parse(reader.feed(chunk), max_events - len(events))
                if reader.total > CHANNEL_LIMIT:
                    flooded = True
                    break
                continue
            # EOF (every writer gone) or the child exited: drain what it left in the pipe, then stop
            os.set_blocking(read_fd, False)
            try:
                while reader.total < CHANNEL_LIMIT and (chunk := os.read(read_fd, 1 << 16)):
                    events += _parse(reader.feed(chunk), max_events - len(events))
            except BlockingIOError:
                pass
            break
    finally:
        os.close(pidfd)
    return events, timed_out, flooded


def _parse(lines: list[bytes], room: int) -> list[dict]:
    """Decode event lines; at most `room` are kept (the parent needs one per test, plus load and done)."""
    events: list[dict] = []
    for line in lines:
        if len(events) >= room:
            break
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue  # garbage on the channel is ignored; missing events count against the program
        if isinstance(event, dict):
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


def run_job(job: dict, iso: dict) -> dict:
    workdir = tempfile.mkdtemp(prefix="cv-")
    if iso["uid_drop"]:
        os.chown(workdir, iso["uid"], iso["uid"])
    job["vm_base"] = _vm_size()
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            _enter_child(job, write_fd, workdir, iso)
            from codevalue import _child

            _child.run(job, RESULT_FD, drop_privileges=lambda: _drop_privileges(iso))
        finally:
            os._exit(71)
    os.close(write_fd)
    events, timed_out, flooded = _read_events(read_fd, pid, start + job["deadline"], len(job["inputs"]) + 3)
    os.close(read_fd)
    try:
        os.killpg(pid, signal.SIGKILL)  # the whole group, whether or not the program finished
    except (ProcessLookupError, PermissionError):
        pass
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    leftovers = _sweep(iso)
    _clean(workdir, iso)
    return {
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
    slot, uid_base = int(sys.argv[1]), int(sys.argv[2])
    hidden = json.loads(sys.argv[3]) if len(sys.argv) > 3 else []
    out = sys.stdout.buffer
    from codevalue import (
        _child,
        compare,  # noqa: F401  (used by the child; imported once here)
    )

    exec(_child.APPS_PREAMBLE, {})  # import numpy & co. once, so every fork starts warm
    gc.collect()
    gc.freeze()  # keep the garbage collector from touching (and so copying) the warm heap in every child
    iso = setup_isolation(slot, uid_base, hidden)
    out.write(json.dumps({"ready": True, "isolation": iso}).encode() + b"\n")
    out.flush()
    for line in sys.stdin.buffer:
        job = json.loads(line)
        broken = False
        try:
            result = run_job(job, iso)
        except Exception as e:  # an infrastructure failure (fork refused, cleanup failed): say so
            result = {"infra_error": f"{type(e).__name__}: {e}"}
            broken = True
        result["id"] = job["id"]
        out.write(json.dumps(result).encode() + b"\n")  # ASCII: a lone surrogate cannot break it
        out.flush()
        if broken:  # state we could not clean up must not reach the next program: the parent starts a new worker
            sys.exit(3)


if __name__ == "__main__":
    main()
