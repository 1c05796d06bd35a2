"""The sandbox run by an unprivileged user, in the two modes the README describes for it: user namespaces only
(an allowlisted root, the caller's uid, the host's /proc), and neither namespaces nor a uid drop (the host's
filesystem, rlimits, process groups, the subreaper sweep).

The tests start a driver as `nobody` (setpriv; root only): it runs a correct program, one that looks for the
checkout, and an endless loop through `Sandbox`, and prints what it saw. Every program here is benign but the
loop, and all of them run inside the project's sandbox. "Neither" is made by running the driver in a user
namespace whose max_user_namespaces is 0, so that the worker's unshare fails as on a host that forbids them.
nobody cannot reach this checkout's venv (its Python lives under /root), so the driver runs on the system Python
of the same version in a venv under /tmp whose site-packages point at the checkout's venv.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts interpreters as another user

CHECKOUT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))

DRIVER = """
import json
from codevalue.sandbox import Job, Sandbox, SandboxConfig
with Sandbox(SandboxConfig(workers=1)) as box:
    iso = box.isolation
    square = box.run(Job("print(int(input()) ** 2)", "stdin", "script", inputs=["7"], timeout=5, deadline=10))
    sees = box.run(Job("import os\\nprint(os.path.exists(README), os.getuid())", "stdin", "script", inputs=[""],
                       timeout=5, deadline=10))
    loop = box.run(Job("while True:\\n    pass\\n", "stdin", "script", inputs=[""], timeout=1, deadline=3))
print(json.dumps({"iso": iso, "square": square.tests[0].stdout, "sees": sees.tests[0].stdout,
                  "loop": [loop.tests[0].status, loop.infra_error]}))
""".replace("README", repr(str(CHECKOUT / "README.md")))

# Run as root: a child enters a new user namespace (uids 0-65535 mapped to themselves by this parent), sets its
# max_user_namespaces to 0, becomes nobody and execs the driver; the worker's own unshare then fails.
WITHOUT_NAMESPACES = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
up, down = os.pipe(), os.pipe()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        os._exit(90)
    os.write(up[1], b"x")
    os.read(down[0], 1)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.setgroups([])
    os.setgid(NOBODY_GID)
    os.setuid(NOBODY_UID)
    os.execv(sys.argv[1], sys.argv[1:])
os.read(up[0], 1)
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as f:
        f.write("0 0 65536\\n")
os.write(down[1], b"x")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.fixture(scope="module")
def nobody_venv():
    if os.geteuid() != 0:
        pytest.skip("becoming nobody needs root")
    if shutil.which("setpriv") is None or not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs setpriv and {SYSTEM_PYTHON} (the version of this venv's Python)")
    nobody = pwd.getpwnam("nobody")
    if nobody.pw_uid > 65535 or nobody.pw_gid > 65535:
        pytest.skip("nobody's uid or gid is outside the range the namespace maps")
    where = Path(tempfile.mkdtemp(prefix="cv-nobody-", dir="/tmp"))
    try:
        subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(where / "venv")], check=True,
                       timeout=120)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        (where / "venv" / "lib" / version / "site-packages" / "checkout-venv.pth").write_text(SITE_PACKAGES + "\n")
        (where / "driver.py").write_text(DRIVER)
        (where / "without_namespaces.py").write_text(
            WITHOUT_NAMESPACES.replace("NOBODY_UID", str(nobody.pw_uid)).replace("NOBODY_GID", str(nobody.pw_gid)))
        subprocess.run(["chmod", "-R", "a+rX", str(where)], check=True)
        yield where, nobody
    finally:
        shutil.rmtree(where, ignore_errors=True)


def run_driver(argv: list[str], where: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(CHECKOUT), "HOME": str(where)}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=where, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_user_namespaces_only(nobody_venv):
    where, nobody = nobody_venv
    as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    probe = subprocess.run([*as_nobody, "unshare", "--user", "--map-root-user", "true"], capture_output=True,
                           timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"this host refuses nobody a user namespace: {probe.stderr.decode()[-300:]}")
    python = str(where / "venv" / "bin" / "python")
    got = run_driver(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", python,
                      str(where / "driver.py")], where)
    iso = got["iso"]
    assert (iso["uid_drop"], iso["root"], iso["private_tmp"]) == (False, "allowlist", True), iso
    assert iso["namespaces"] == ["user", "mount", "network", "ipc", "uts"]
    assert "/proc (the host's: every process)" in iso["visible"]
    assert any("not root: programs run as the caller's user" in n for n in iso["notes"])
    assert got["square"] == "49\n"
    assert got["sees"] == "False 0\n"  # the checkout is out of view; uid 0 of the namespace, nobody outside
    assert got["loop"] == ["timeout", ""]


def test_neither_namespaces_nor_uid_drop(nobody_venv):
    where, nobody = nobody_venv
    python = str(where / "venv" / "bin" / "python")
    got = run_driver([sys.executable, str(where / "without_namespaces.py"), python, str(where / "driver.py")], where)
    iso = got["iso"]
    assert (iso["uid_drop"], iso["namespaces"], iso["root"], iso["private_tmp"]) == (False, [], "host", False), iso
    assert any(n.startswith("namespaces unavailable (") for n in iso["notes"]), iso["notes"]
    assert "subreaper" in iso["cleanup"]
    assert got["square"] == "49\n"
    assert got["sees"] == f"True {nobody.pw_uid}\n"  # the host's filesystem, as the caller (nobody)
    assert got["loop"] == ["timeout", ""]
