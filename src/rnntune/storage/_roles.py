"""Least-privilege PostgreSQL roles for the stack: workers read and write the study tables and
nothing else (no DDL), the dashboard only reads. ``rnntune init`` (the owner of the schema)
creates or updates them after each migration, so every table it creates is covered.

Passwords are sent as SCRAM-SHA-256 verifiers computed here, never as plain text: a server that
logs DDL (``log_statement = ddl``) logs the verifier, not the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from rnntune.exceptions import ConfigError, StorageError, first_line

from ._locks import exclusive
from ._url import mask_url

ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677, as pg_authid has it)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def read_role_password(var: str, path: str) -> str:
    try:
        password = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"cannot read {var}={path} ({getattr(e, 'strerror', None) or type(e).__name__}): "
            f"point {var} at a readable file holding the role's password (a Docker secret)"
        ) from e
    if not password:
        raise ConfigError(f"{var}={path} is empty: write the role's password into that file")
    return password


def ensure_roles(
    engine: Engine, *, worker: tuple[str, str] | None, dashboard: tuple[str, str] | None
) -> None:
    """Create or update the worker and dashboard roles (name, password) and grant them exactly
    what they need on the current schema. Idempotent; PostgreSQL only."""
    if engine.dialect.name != "postgresql":
        raise ConfigError(
            "database roles need PostgreSQL: drop --worker-role/--dashboard-role for SQLite"
        )
    for given in (worker, dashboard):
        if given and not ROLE_NAME.fullmatch(given[0]):
            raise ConfigError(
                f"role name {given[0]!r} is not usable: use lower-case letters, digits and _"
            )
    try:
        with exclusive(engine, "rnntune:roles"), engine.begin() as conn:
            db = conn.execute(text("SELECT current_database()")).scalar_one()
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            owner = conn.execute(text("SELECT current_user")).scalar_one()
            if owner in {r[0] for r in (worker, dashboard) if r}:
                raise ConfigError(
                    f"init connects as {owner!r}, the role it was asked to restrict: run init "
                    "as the database owner and give the workers and the dashboard other roles"
                )

            def q(sql: str, **params: str) -> None:
                # Identifiers and literals quoted by the server (format %I/%L), then run.
                stmt = conn.execute(text(f"SELECT format({sql})"), params).scalar_one()
                conn.exec_driver_sql(stmt)  # no parameters: psycopg2 sends it as it is

            def role(name: str, password: str) -> None:
                exists = conn.execute(
                    text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}
                ).first()
                verb = "ALTER" if exists else "CREATE"
                q(
                    f"'{verb} ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
                    "PASSWORD %L', :n, :p",
                    n=name,
                    p=scram_verifier(password),
                )
                q("'REVOKE ALL ON DATABASE %I FROM %I', :d, :n", d=db, n=name)
                q("'GRANT CONNECT ON DATABASE %I TO %I', :d, :n", d=db, n=name)
                q("'REVOKE CREATE ON SCHEMA %I FROM %I', :s, :n", s=schema, n=name)
                q("'GRANT USAGE ON SCHEMA %I TO %I', :s, :n", s=schema, n=name)

            # Before PostgreSQL 15 every role may create tables in `public`: not these ones.
            q("'REVOKE CREATE ON SCHEMA %I FROM PUBLIC', :s", s=schema)
            if worker:
                role(*worker)
                name = worker[0]
                for what, privs in (
                    ("TABLES", "SELECT, INSERT, UPDATE, DELETE"),
                    ("SEQUENCES", "USAGE, SELECT, UPDATE"),
                ):
                    q(f"'GRANT {privs} ON ALL {what} IN SCHEMA %I TO %I', :s, :n", s=schema, n=name)
                    q(
                        f"'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT {privs} ON {what} TO %I', "
                        ":s, :n",
                        s=schema,
                        n=name,
                    )
            if dashboard:
                role(*dashboard)
                name = dashboard[0]
                q("'GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', :s, :n", s=schema, n=name)
                q(
                    "'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO %I', :s, :n",
                    s=schema,
                    n=name,
                )
    except SQLAlchemyError as e:
        raise StorageError(
            f"cannot set up the database roles at {mask_url(str(engine.url))} ({first_line(e)}): "
            "run init as the database owner (a role that may create roles)"
        ) from e
