"""`pipeline up --team`: the Prefect server and the MLflow server on a local Postgres, no Docker.

Debian's `postgresql` binaries (initdb, postgres, createdb) run the cluster from a data dir under
the work dir (<workdir>/postgres/data), listening on 127.0.0.1 only, with its socket in the same
folder. initdb and postgres refuse to run as root, so as root they run as the unprivileged
`postgres` user (else `nobody`) through `runuser`, and that user owns the folder. Authentication is
`trust` on loopback for the one role `pipeline`: a local developer stack, as the compose file's is
for a team host. Databases: `prefect` (asyncpg) and `mlflow` (psycopg2).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pipeline.app.process import ServiceError, spawn, wait_until

ROLE = "pipeline"
DATABASES = ("prefect", "mlflow")
PG_DIRS = ("/usr/lib/postgresql",)


def pg_bin(name: str) -> str | None:
    """A Postgres program: on PATH, else the newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which(name)
    if found:
        return found
    for base in PG_DIRS:
        versions = sorted(Path(base).glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
        for b in reversed(versions):
            if (b / name).is_file():
                return str(b / name)
    return None


def missing_programs() -> list[str]:
    return [n for n in ("initdb", "postgres", "createdb", "pg_isready") if pg_bin(n) is None]


def _run_as() -> list[str]:
    """The prefix that runs a program as an unprivileged user when we are root ([] otherwise)."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return [shutil.which("runuser") or "runuser", "-u", user, "--"]
    raise ServiceError("running as root and no unprivileged user (postgres, nobody) to run Postgres as")


def _chown(path: Path, prefix: list[str]) -> None:
    if prefix:
        user = pwd.getpwnam(prefix[2])
        for p in [path, *path.rglob("*")]:
            os.chown(p, user.pw_uid, user.pw_gid)


def urls(port: int) -> dict[str, str]:
    return {"prefect": f"postgresql+asyncpg://{ROLE}@127.0.0.1:{port}/prefect",
            "mlflow": f"postgresql://{ROLE}@127.0.0.1:{port}/mlflow"}


def start_postgres(workdir: Path, port: int, logs: Path, env: dict[str, str], timeout: float,
                   started: dict[str, dict[str, Any]], log: Any) -> dict[str, Any]:
    """initdb (first time), start postgres on 127.0.0.1:port, create the role's databases; the state entry."""
    missing = missing_programs()
    if missing:
        raise ServiceError(f"--team needs Postgres ({', '.join(missing)} not found): apt-get install postgresql")
    prefix = _run_as()
    root = workdir / "postgres"
    data, sock = root / "data", root / "run"
    sock.mkdir(parents=True, exist_ok=True)
    _chown(root, prefix)
    if not (data / "PG_VERSION").is_file():
        out = subprocess.run([*prefix, pg_bin("initdb"), "-D", str(data), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                              "--no-instructions"], capture_output=True, text=True, env=env, cwd=str(root))
        if out.returncode != 0:
            hint = f" (as {prefix[2]}: every folder above {root} must be searchable by that user)" if prefix else ""
            raise ServiceError(f"initdb failed ({out.returncode}){hint}: {out.stderr[-2000:]}")
        log(f"Postgres cluster initialised in {data}")
    entry = spawn("postgres", [*prefix, pg_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(sock),
                               "-c", "listen_addresses=127.0.0.1"], env, logs, root)
    started["postgres"] = entry

    def ready() -> bool:
        return subprocess.run([pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE],
                              capture_output=True, env=env).returncode == 0

    wait_until(ready, entry, "Postgres", timeout)
    for db in DATABASES:
        out = subprocess.run([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE, db],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0 and "already exists" not in out.stderr:
            raise ServiceError(f"createdb {db} failed: {out.stderr[-1000:]}")
    entry.update(url=f"postgresql://{ROLE}@127.0.0.1:{port}", port=port, data=str(data), databases=list(DATABASES))
    log(f"Postgres on 127.0.0.1:{port} (data {data}), databases {', '.join(DATABASES)}")
    return entry
