"""The fuzz pass of Flywheel's public API (`make fuzz`, and the end of `make test`).

Starts a throwaway `flywheel serve` and runs schemathesis against the
server's own OpenAPI document (`/api/openapi.json`) with every check, so
that a client generated from the document can rely on it: no 5xx, every
status code, content type, header and body as documented, requests the
schema allows accepted and those it refuses refused, no resource gone
after it was created nor still there after it was deleted, nothing served
without the API key. Nothing is excluded.

    python scripts/fuzz.py BINARY

BINARY is a built `flywheel`; this builds nothing. Run it with the Python
that has schemathesis (`make fuzz` makes a venv with a pinned one); the
`schemathesis` program next to that Python is used. Settings, from the
environment:

    FUZZ_EXAMPLES  cases per operation and phase (default 100)
    FUZZ_SEED      the seed (default 1, so a run repeats the last one's
                   cases; `random` for new ones)
    FUZZ_OUT       where the server's data and log and the JUnit report go
                   (default: a new temporary directory, kept on failure)
    FUZZ_BACKEND   `sqlite` (default) or `postgres`: a throwaway PostgreSQL
                   server of its own (initdb and postgres from
                   /usr/lib/postgresql, as the cargo tests start one), where
                   text cannot hold what SQLite's can
    FUZZ_DATABASE_URL  an (empty) PostgreSQL database to use instead

Exits with schemathesis's status: 0 only if every check passed.

The server runs no executions (`--no-workers`): this pass checks the API,
not runs in sandboxes (the cargo tests run those), and the fuzzer queues
hundreds of executions that would otherwise keep two cores busy for many
minutes. A queued execution's event stream lasts until the execution ends,
so a reaper stops every queued execution half a second or so after it was
made (through the API, as a client would); the streams then end, and
`stop` and `retry` meet executions in every state they can have here.
"""

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python scripts/fuzz.py BINARY", file=sys.stderr)
        return 2
    binary = os.path.abspath(sys.argv[1])
    if not os.access(binary, os.X_OK):
        print(f"fuzz: {binary} is not a program; build it first (make fuzz does)", file=sys.stderr)
        return 2
    schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    if not os.access(schemathesis, os.X_OK):
        schemathesis = shutil.which("schemathesis") or "schemathesis"
    examples = os.environ.get("FUZZ_EXAMPLES", "100")
    seed = os.environ.get("FUZZ_SEED", "1")
    out = os.environ.get("FUZZ_OUT") or tempfile.mkdtemp(prefix="flywheel-fuzz.")
    os.makedirs(out, exist_ok=True)
    key = "fw_fuzz_" + secrets.token_hex(16)

    postgres = None
    if not os.environ.get("FUZZ_DATABASE_URL") and os.environ.get("FUZZ_BACKEND", "sqlite") == "postgres":
        postgres = Postgres()
    database = os.environ.get("FUZZ_DATABASE_URL") or (postgres.url if postgres else None)
    server = None
    status = 1
    try:
        server = start_server(binary, out, key, database)
        url = wait_for_url(server, out)
        stop = threading.Event()
        reaper = threading.Thread(target=reap, args=(url, key, stop), daemon=True)
        reaper.start()
        command = [
            schemathesis, "run", f"{url}/api/openapi.json",
            "--header", f"Authorization: Bearer {key}",
            "--checks", "all",
            "--max-examples", examples,
            "--generation-database", "none",
            "--request-timeout", "10",
            "--no-color",
            "--report", "junit", "--report-dir", os.path.join(out, "report"),
        ]  # fmt: skip
        if seed != "random":
            command += ["--seed", seed]
        started = time.monotonic()
        # In `out`, so schemathesis's cache of past failures is this run's own.
        hooks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_hooks.py")
        env = dict(os.environ, SCHEMATHESIS_HOOKS=hooks)
        status = subprocess.run(command, cwd=out, env=env, check=False).returncode
        stop.set()
        reaper.join(timeout=5)
        print(f"fuzz: schemathesis exited {status} after {time.monotonic() - started:.0f} s")
    finally:
        if server:
            stop_server(server)
        if postgres:
            postgres.stop()
    if server.returncode not in (0, None, -signal.SIGTERM):
        print(f"fuzz: the server exited {server.returncode}; its log is {out}/server.err", file=sys.stderr)
        status = status or 1
    if status == 0 and not os.environ.get("FUZZ_OUT"):
        shutil.rmtree(out, ignore_errors=True)
    elif status != 0:
        print(f"fuzz: failed; the server's data, its log and the report are in {out}", file=sys.stderr)
    return status


def start_server(binary: str, out: str, key: str, database: str | None) -> subprocess.Popen:
    env = dict(os.environ, FLYWHEEL_API_KEY=key, FLYWHEEL_LOG=os.environ.get("FLYWHEEL_LOG", "warn"))
    env.pop("DATABASE_URL", None)
    command = [
        binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(out, "data"),
        "--load-examples", "--no-workers", "--shutdown-grace", "1",
    ]  # fmt: skip
    if database:
        # An API-only node on PostgreSQL names where the artifacts are.
        command += ["--database-url", database, "--artifacts", os.path.join(out, "artifacts")]
    with open(os.path.join(out, "server.out"), "wb") as stdout, open(os.path.join(out, "server.err"), "wb") as stderr:
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


def wait_for_url(server: subprocess.Popen, out: str) -> str:
    """The URL from the server's `listening on URL` line (as the tests wait for it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(os.path.join(out, "server.out"), encoding="utf-8", errors="replace") as stdout:
            for line in stdout:
                if line.startswith("listening on "):
                    return line.removeprefix("listening on ").strip()
        if server.poll() is not None:
            raise SystemExit(f"fuzz: flywheel serve exited {server.returncode}: {read(out, 'server.err')}")
        time.sleep(0.05)
    raise SystemExit(f"fuzz: flywheel serve did not start in 30 s: {read(out, 'server.err')}")


def reap(url: str, key: str, stop: threading.Event) -> None:
    """Stops queued executions until `stop` is set."""
    headers = {"Authorization": f"Bearer {key}"}
    while not stop.wait(0.5):
        for status in ("pending", "queued"):
            try:
                page = call("GET", f"{url}/api/executions?status={status}&limit=200", headers)
                for execution in page.get("items", []):
                    call("POST", f"{url}/api/executions/{execution['execution_uuid']}/stop", headers)
            except (OSError, ValueError, KeyError):
                # The fuzzer may have deleted it first, or the server is
                # going away: the next round looks again.
                continue


def call(method: str, url: str, headers: dict) -> dict:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        if err.code in (404, 409):  # deleted or ended meanwhile
            return {}
        raise


class Postgres:
    """A throwaway PostgreSQL server: initdb into a temp dir, then postgres
    listening only on a unix socket there, fsync off (the data is thrown
    away). As root it runs as the `postgres` user (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
        if not versions:
            raise SystemExit("fuzz: FUZZ_BACKEND=postgres needs initdb and postgres: apt install postgresql")
        self.bin = os.path.dirname(max(versions, key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0))
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dir = tempfile.mkdtemp(prefix="flywheel-fuzz-pg.")
        if self.user:
            shutil.chown(self.dir, self.user, self.user)
        self.data = os.path.join(self.dir, "data")
        self.run("initdb", "--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync",
                 "-D", self.data)  # fmt: skip
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        options = f"-p {self.port} -k {self.dir} -c listen_addresses= -c fsync=off -c synchronous_commit=off -c max_connections=200"
        self.run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.dir, "log"), "-w", "start")
        self.run("createdb", "-h", self.dir, "-p", str(self.port), "-U", "postgres", "flywheel")
        self.url = f"postgres://postgres@localhost:{self.port}/flywheel?host={self.dir}"

    def run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [os.path.join(self.bin, program), *args],
            cwd=self.dir, user=self.user, capture_output=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            self.stop()
            raise SystemExit(f"fuzz: {program} failed: {done.stderr.decode(errors='replace')}")

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            subprocess.run(
                [os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop"],
                cwd=self.dir, user=self.user, capture_output=True, check=False,
            )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def read(out: str, name: str) -> str:
    with open(os.path.join(out, name), encoding="utf-8", errors="replace") as file:
        return file.read()[-4000:]


if __name__ == "__main__":
    sys.exit(main())
