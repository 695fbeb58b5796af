"""A fork server for the `taskindex` command, so that the docs' bash blocks (tests/test_readme.py) do not pay
Python's start-up and the imports of PyTorch, pandas and FAISS in every one of their fifty-odd commands.

`CliServer` starts this file as a process that imports the CLI's heavy modules once (nothing else: no probe
is built, no thread pool started) and writes a `taskindex` shim into a folder to put first on PATH. Each shim
call sends its arguments, working folder, environment and its stdin, stdout and stderr (the descriptors
themselves) over a Unix socket; the server forks, the child takes them over and runs `taskindex.cli.main`
as the installed command would, and the shim exits with the child's status. The installed entry point
itself is run by tests/test_wheel.py and by the test of this server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PRELOAD = ("taskindex.cli.main", "torch", "torchvision", "pandas", "pyarrow.parquet", "faiss", "matplotlib.figure",
           "taskindex.embedding.probes", "taskindex.index.task_index", "taskindex.select.experts")
SHIM = """#!{python} -S
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({sock!r})
body = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [len(body).to_bytes(8, "big") + body], [0, 1, 2])
status = s.recv(8)
sys.exit(int.from_bytes(status, "big", signed=True) if len(status) == 8 else 70)
"""


class CliServer:
    """`with CliServer(folder) as bin_dir:` a folder whose `taskindex` runs in a fork of a warm process."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.sock = os.path.join(tempfile.mkdtemp(prefix="taskindex-cli-"), "sock")  # a short path: AF_UNIX
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, __file__, self.sock], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not os.path.exists(self.sock):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the taskindex fork server did not start (status {self.process.poll()})")
            time.sleep(0.05)
        shim = self.folder / "taskindex"
        shim.write_text(SHIM.format(python=sys.executable, sock=self.sock))
        shim.chmod(0o755)
        return self.folder

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        os.rmdir(os.path.dirname(self.sock))


def _request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = int.from_bytes(data[:8], "big")
    body = data[8:]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ConnectionError("the shim went away")
        body += more
    return json.loads(body), fds


def _child(request: dict, fds: list[int]) -> int:
    """In the forked child: become the command the shim stands for, and return its exit status."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.argv = ["taskindex", *request["argv"]]
    from taskindex.cli import main

    try:
        main()
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def _handle(conn: socket.socket) -> None:
    with conn:
        request, fds = _request(conn)
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                conn.close()
                status = _child(request, fds)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        for fd in fds:
            os.close(fd)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        conn.sendall((status if status >= 0 else 128 - status).to_bytes(8, "big", signed=True))


def serve(path: str) -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    sys.stdout.flush()
    server = socket.socket(socket.AF_UNIX)
    server.bind(path + ".tmp")
    server.listen(16)
    os.rename(path + ".tmp", path)  # the socket appears only once the server listens
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1])
