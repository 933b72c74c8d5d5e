"""Operations: the pid file, systemd readiness notification, inherited sockets (fd://N)
and socket activation (LISTEN_FDS)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from conftest import APPS, BINARY, Server, children_of
from kit import comm, get_json


def listening_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


def test_pid_file_written_then_removed(serve, tmp_path):
    pidfile = tmp_path / "run" / "rwsgi.pid"
    pidfile.parent.mkdir()
    server = serve("ops_apps:whoami", "--pid", str(pidfile), workers=1)
    assert pidfile.read_text() == f"{server.pid}\n"
    server.stop()
    assert server.proc.returncode == 0
    assert not pidfile.exists()


def test_unwritable_pid_file_is_one_clear_error(tmp_path):
    proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", "-w", "1",
                           "--pid", str(tmp_path / "missing" / "x.pid"), "ops_apps:whoami"],
                          capture_output=True, text=True, timeout=15,
                          env={**os.environ, "PYTHONPATH": str(APPS)})
    assert proc.returncode == 1, proc.stderr
    assert "--pid" in proc.stderr and "x.pid" in proc.stderr, proc.stderr


def test_systemd_notify_ready_and_stopping(tmp_path):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(15)
    server = Server("ops_apps:whoami", workers=1, env={"NOTIFY_SOCKET": address})
    try:
        ready = listener.recv(4096).decode()
        assert "READY=1" in ready.splitlines(), ready
        assert f"MAINPID={server.pid}" in ready.splitlines(), ready
        # The variable is the master's alone: the workers do not see it.
        assert get_json(server.port)["notify_socket"] is None
        server.signal(signal.SIGTERM)
        stopping = listener.recv(4096).decode()
        assert "STOPPING=1" in stopping.splitlines(), stopping
    finally:
        server.stop()
        listener.close()
    assert server.proc.returncode == 0


def test_bind_to_an_inherited_descriptor(serve):
    sock = listening_socket()
    port = sock.getsockname()[1]
    try:
        server = serve("ops_apps:whoami", workers=1, port=port, bind=f"fd://{sock.fileno()}",
                       pass_fds=(sock.fileno(),))
        assert f"Listening at: http://127.0.0.1:{port}" in server.log
        assert get_json(port)["pid"] in children_of(server.pid)
    finally:
        sock.close()


def test_bind_to_a_descriptor_that_is_no_listening_socket(tmp_path):
    with open(tmp_path / "plain", "w") as plain:
        fd = plain.fileno()
        proc = subprocess.run([str(BINARY), "serve", "-b", f"fd://{fd}", "-w", "1",
                               "ops_apps:whoami"], capture_output=True, text=True, timeout=15,
                              pass_fds=(fd,), env={**os.environ, "PYTHONPATH": str(APPS)})
    assert proc.returncode == 1, proc.stderr
    assert f"fd://{fd}" in proc.stderr, proc.stderr
    assert "not a listening stream socket" in proc.stderr, proc.stderr


def test_systemd_socket_activation(tmp_path):
    sock = listening_socket()
    port = sock.getsockname()[1]
    fd = sock.fileno()

    # As systemd does: the socket at fd 3, LISTEN_PID naming the process that execs rwsgi
    # (the shell's pid is kept across exec).
    as_systemd = ["bash", "-c", f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"']
    server = Server("ops_apps:whoami", workers=1, bind="", port=port, wait=False,
                    wrap=as_systemd, pass_fds=(fd,))
    try:
        server.wait_ready()
        assert f"Listening at: http://127.0.0.1:{port}" in server.log, server.log
        answer = get_json(port)
        assert answer["listen_fds"] is None  # taken by the master, not passed down
        server.stop()
        assert server.proc.returncode == 0
        # The socket was not rwsgi's to destroy: the service manager's copy still listens.
        probe = socket.create_connection(("127.0.0.1", port), timeout=2)
        probe.close()
    finally:
        server.stop()
        sock.close()


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().rstrip(b"\0").decode()


def test_process_titles(serve):
    server = serve("ops_apps:whoami", workers=2)
    worker = get_json(server.port)["pid"]
    wanted = ["rwsgi: front"] + ["rwsgi: worker [ops_apps:whoami]"] * 2
    deadline = time.monotonic() + 5
    while True:  # a child names itself just after the fork
        titles = sorted(cmdline(pid) for pid in children_of(server.pid))
        if titles == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert titles == wanted, titles
    assert cmdline(server.pid) == "rwsgi: master [ops_apps:whoami]"
    assert comm(server.pid) == "rwsgi-master"
    assert cmdline(worker) == "rwsgi: worker [ops_apps:whoami]"
    assert comm(worker) == "rwsgi-worker"


def ids(pid: int) -> tuple[int, int]:
    """The effective uid and gid of `pid`."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1])


def readable_by_others(path: str) -> bool:
    """Whether every directory down to `path` lets other users through."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        current = os.sep.join(parts[:i])
        if os.path.isdir(current) and not os.stat(current).st_mode & 0o001:
            return False
    return True


def test_user_and_group(serve, tmp_path):
    import grp
    import pwd
    import sys
    if os.geteuid() != 0:
        # Not root: switching is impossible, and said so at start.
        proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", "--user", "nobody",
                               "ops_apps:whoami"], capture_output=True, text=True, timeout=15,
                              env={**os.environ, "PYTHONPATH": str(APPS)})
        assert proc.returncode == 2 and "--user" in proc.stderr, proc.stderr
        return
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid)
    # The app must be readable by the user the workers become.
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "ops_apps.py").write_text((APPS / "ops_apps.py").read_text())
    os.chmod(tmp_path, 0o755)
    os.chmod(apps, 0o755)
    if readable_by_others(sys.base_prefix) and readable_by_others(str(apps)):
        flags, wanted = ["--user", "nobody"], (nobody.pw_uid, nobody.pw_gid)
    else:
        # This Python cannot be read by another user (it lives under /root): switch the
        # group only, which takes the same path (setgroups, setgid) but keeps uid 0.
        flags, wanted = ["--group", nogroup.gr_name], (0, nogroup.gr_gid)
    server = serve("ops_apps:whoami", *flags, "--chdir", str(apps), workers=1)
    worker = get_json(server.port)["pid"]
    assert ids(worker) == wanted
    front = [pid for pid in children_of(server.pid) if pid != worker]
    assert [ids(pid) for pid in front] == [wanted]
    assert ids(server.pid) == (0, 0)  # the master keeps its own, to bind and to reap


def test_unknown_user_or_group_is_named():
    for flag, value in (("--user", "no-such-user-x"), ("--group", "no-such-group-x")):
        proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", flag, value,
                               "ops_apps:whoami"], capture_output=True, text=True, timeout=15,
                              env={**os.environ, "PYTHONPATH": str(APPS)})
        assert proc.returncode == 2, proc.stderr
        assert flag in proc.stderr and value in proc.stderr, proc.stderr


def test_umask_applies_to_the_unix_socket(serve, tmp_path):
    path = tmp_path / "s.sock"
    server = serve("ops_apps:whoami", "--umask", "0o077", bind=f"unix:{path}", workers=1)
    assert path.exists(), server.log
    assert path.stat().st_mode & 0o777 == 0o700, oct(path.stat().st_mode)
    bad = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", "--umask", "0o1000",
                          "ops_apps:whoami"], capture_output=True, text=True, timeout=15,
                         env={**os.environ, "PYTHONPATH": str(APPS)})
    assert bad.returncode == 2 and "--umask" in bad.stderr, bad.stderr


def test_log_files_belong_to_the_user(tmp_path):
    import grp
    import pwd
    if os.geteuid() != 0:
        # Not root: --user is refused at start (test_user_and_group); nothing to hand over.
        return
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    # --group only: the app under /root stays readable (see test_user_and_group).
    server = Server("ops_apps:whoami", "--group", group, "--error-logfile", str(error_log),
                    "--access-logfile", str(access_log), workers=1, wait=False)
    try:
        deadline = time.monotonic() + 15
        while not (error_log.exists() and "Listening at" in error_log.read_text()):
            assert time.monotonic() < deadline and server.proc.poll() is None
            time.sleep(0.05)
        for path in (error_log, access_log):
            assert os.stat(path).st_gid == nobody.pw_gid, path
    finally:
        server.stop()
