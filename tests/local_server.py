"""A server process for a test: started on a free port of 127.0.0.1, waited for until it answers, then stopped."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(command: list[str], log_path: Path, probe_url: str, what: str, timeout: float = 180, **popen):
    """Runs ``command`` (its output into ``log_path``) and yields the JSON of ``probe_url`` once the server answers it;
    the test fails with the log's end if the server exits or does not answer within ``timeout`` seconds."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    pytest.fail(f"{what} exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
                try:
                    with urllib.request.urlopen(probe_url, timeout=5) as answer:
                        first = json.load(answer)
                    break
                except OSError:  # not listening yet, or an error status while it starts
                    if time.monotonic() > deadline:
                        pytest.fail(f"{what} did not answer in time:\n{log_path.read_text()[-4000:]}")
                    time.sleep(0.5)
            yield first
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
