"""Real processes for end-to-end tests: the served app and a Prometheus Alertmanager.

Each helper is a context manager that yields a base URL and always stops what it
started: TERM, a bounded wait, then KILL of the whole process group. Every process
also runs under coreutils `timeout`, so nothing outlives a run that was killed
before its `finally` ran. Only the standard library is used.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ALERTMANAGER_BIN = Path("/usr/bin/prometheus-alertmanager")
ALERTMANAGER_EXTERNAL_URL = "http://alertmanager.example:9093"

# an upper bound on any one process's life (seconds); `timeout` enforces it
MAX_LIFETIME = 900
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class ServerError(RuntimeError):
    """A process could not be started or did not become ready; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_script(name: str) -> Path:
    """A console script of the running interpreter's environment (`<venv>/bin/<name>`)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise ServerError(f"{path} not found: is the package installed in this environment?")
    return path


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# 127.0.0.1 only: never through an HTTP proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _ready(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):  # refused, reset, 5xx (HTTPError is a URLError)
        return False


def _stop(proc: subprocess.Popen) -> None:
    """TERM (timeout forwards it to its child), wait, then KILL the whole process group."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    # the group is timeout's (start_new_session): this also reaches a child that ignored TERM
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(STOP_TIMEOUT)


def _start(argv: list[str], *, env: Mapping[str, str], log: Path, ready_url: str,
           cwd: Path) -> subprocess.Popen:
    """Start `argv` under `timeout` and wait until `ready_url` answers 2xx. On failure the
    process is stopped and ServerError says why, with the end of its log."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["timeout", "--kill-after=5", str(MAX_LIFETIME), *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=dict(env), cwd=cwd, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _ready(ready_url):
            if proc.poll() is not None:
                raise ServerError(f"{Path(argv[0]).name} exited with {proc.returncode} before "
                                  f"{ready_url} answered; log {log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise ServerError(f"{ready_url} did not answer 2xx within {STARTUP_TIMEOUT:.0f}s; "
                                  f"log {log}:\n{_tail(log)}")
            time.sleep(0.1)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _start_on_free_port(make_argv, ready_path: str, **kw) -> tuple[subprocess.Popen, str]:
    """A free port can be taken again before the server binds it: try a few."""
    for attempt in range(3):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        try:
            return _start(make_argv(port), ready_url=base + ready_path, **kw), base
        except ServerError as exc:
            if attempt == 2 or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    # the developer's own ALERTLINK_* settings must not leak into a test's service
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTLINK_")}
    env.update(extra)
    return env


@contextmanager
def running_service(tmp_path: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """`alertlink migrate`, then `alertlink serve` on a free port of 127.0.0.1; yields its base URL.

    The database is `sqlite:///<tmp_path>/a.db` unless `env` says otherwise; `env` is added to
    (and wins over) the environment, from which inherited ALERTLINK_* variables are removed.
    """
    alertlink = venv_script("alertlink")
    tmp_path.mkdir(parents=True, exist_ok=True)
    full_env = _clean_env({"ALERTLINK_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}",
                           "ALERTLINK_INDEX_PATH": str(tmp_path / 'a.faiss'), **(env or {})})
    log = tmp_path / "alertlink.log"
    done = subprocess.run(["timeout", "--kill-after=5", "120", str(alertlink), "migrate"],
                          env=full_env, cwd=tmp_path, capture_output=True, text=True)
    if done.returncode != 0:
        raise ServerError(f"alertlink migrate exited with {done.returncode}:\n{done.stdout}{done.stderr}")

    proc, base = _start_on_free_port(
        lambda port: [str(alertlink), "serve", "--host", "127.0.0.1", "--port", str(port)],
        "/health", env=full_env, log=log, cwd=tmp_path)
    try:
        yield base
    finally:
        _stop(proc)


def alertmanager_config(webhook_url: str) -> str:
    """One webhook receiver; short group timings so a test sees notifications in seconds."""
    return f"""\
route:
  receiver: alertlink
  group_by: [alertname, service]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: alertlink
    webhook_configs:
      - url: "{webhook_url}"
        send_resolved: true
"""


@contextmanager
def running_alertmanager(tmp_path: Path, webhook_url: str) -> Iterator[str]:
    """A Prometheus Alertmanager (clustering off, storage in `tmp_path`, a free port of 127.0.0.1)
    whose one receiver posts webhooks to `webhook_url`; yields its base URL."""
    if not ALERTMANAGER_BIN.is_file():
        raise ServerError(f"{ALERTMANAGER_BIN} not found (apt-get install prometheus-alertmanager)")
    root = tmp_path / "alertmanager"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "alertmanager.yml"
    config.write_text(alertmanager_config(webhook_url))
    log = root / "alertmanager.log"
    proc, base = _start_on_free_port(
        lambda port: [
            str(ALERTMANAGER_BIN),
            f"--config.file={config}",
            f"--storage.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip on 0.0.0.0:9094
            f"--web.external-url={ALERTMANAGER_EXTERNAL_URL}",
        ],
        "/-/ready", env=dict(os.environ), log=log, cwd=root)
    try:
        yield base
    finally:
        _stop(proc)
