"""Operations: the pid file, systemd readiness notification, inherited sockets (fd://N)
and socket activation (LISTEN_FDS)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

from conftest import APPS, BINARY, Server, alive, children_of


def get_json(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert response.status == 200
        return json.loads(response.read())


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


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


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
