"""Storage URLs: one normalisation, used by every process that opens the database."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from rnntune.exceptions import ConfigError

DEFAULT_STORAGE = "sqlite:///rnntune.db"


def normalize_url(url: str) -> str:
    """Return ``url`` with the driver rnntune ships with made explicit.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which rnntune does not depend on;
    psycopg2 (``psycopg2-binary``) is the driver in the images, so we say so in the URL.
    """
    text = url.strip()
    if not text:
        raise ConfigError(
            "the storage URL is empty: pass --storage sqlite:///rnntune.db or a "
            "postgresql://user:password@host/db URL"
        )
    if text.startswith("postgres://"):  # Heroku-style alias
        text = "postgresql://" + text[len("postgres://") :]
    try:
        parsed = make_url(text)
        port = parsed.port
    except (ArgumentError, ValueError) as e:
        # ValueError: a port that is not a number (make_url's int() of "54x2").
        raise ConfigError(
            f"cannot parse storage URL {mask_url(text)!r}: use sqlite:///FILE.db or "
            "postgresql://user:password@host:5432/db (the port a number; a password with "
            "@ : / in it percent-encoded, or given in RNNTUNE_STORAGE_PASSWORD_FILE)"
        ) from e
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"storage URL {mask_url(text)!r} has port {port}: use a port in 1..65535")
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgresql+psycopg"):
            parsed = parsed.set(drivername="postgresql+psycopg2")
        elif parsed.drivername != "postgresql+psycopg2":
            raise ConfigError(
                f"unsupported PostgreSQL driver {parsed.drivername!r}: use postgresql:// "
                "(rnntune talks to PostgreSQL through psycopg2)"
            )
    elif backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                "an in-memory SQLite storage cannot be shared between processes: "
                "use sqlite:///rnntune.db"
            )
    else:
        raise ConfigError(
            f"unsupported storage backend {backend!r}: use sqlite:///FILE.db or postgresql://..."
        )
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path:
    """The database file of a SQLite URL, absolute."""
    database = make_url(url).database
    assert database, "normalize_url rejects SQLite URLs without a file"
    return Path(database).resolve()


def mask_url(url: str) -> str:
    """The URL with its password hidden, for messages, logs and reports."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Unparseable (a bad port, say): still show it, with anything like a password hidden.
        return _PASSWORD_IN_TEXT.sub(r"\1***@", url)


_PASSWORD_IN_TEXT = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def _read_secret(var: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise ConfigError(
            f"cannot read {var}={path} ({reason}): point {var} at a readable file "
            "(a Docker secret is mounted at /run/secrets/NAME)"
        ) from e
    text = text.strip()
    if not text:
        raise ConfigError(f"{var}={path} is empty: write the value into that file")
    return text


def storage_from_env(given: str | None, env: Mapping[str, str] | None = None) -> str:
    """The storage URL a process uses, with its password from a file when one is named.

    Precedence: ``given`` (``--storage`` or ``RNNTUNE_STORAGE``) > the URL in the file
    ``RNNTUNE_STORAGE_FILE`` > the default. ``RNNTUNE_STORAGE_PASSWORD_FILE`` then sets the
    password of a PostgreSQL URL that has none. The password is put in with SQLAlchemy's URL
    object rather than pasted into text, so any character works in it (``@``, ``:``, ``/``).
    """
    env = os.environ if env is None else env
    url = (given or "").strip()
    if not url and env.get("RNNTUNE_STORAGE_FILE"):
        url = _read_secret("RNNTUNE_STORAGE_FILE", env["RNNTUNE_STORAGE_FILE"])
    if not url:
        url = DEFAULT_STORAGE
    pw_file = env.get("RNNTUNE_STORAGE_PASSWORD_FILE")
    if pw_file:
        url = normalize_url(url)
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise ConfigError(
                "RNNTUNE_STORAGE_PASSWORD_FILE is set but the storage is not PostgreSQL: "
                "unset it, or point --storage at a postgresql:// URL"
            )
        if parsed.password is None:
            password = _read_secret("RNNTUNE_STORAGE_PASSWORD_FILE", pw_file)
            # SQLAlchemy drops a password that has no user name with it (the URL would read
            # postgresql://db/x and libpq would send no password): take libpq's PGUSER then.
            username = parsed.username or env.get("PGUSER")
            if not username:
                raise ConfigError(
                    "RNNTUNE_STORAGE_PASSWORD_FILE is set but the storage URL names no user: "
                    "put one in it (postgresql://USER@host/db) or set PGUSER"
                )
            parsed = parsed.set(username=username, password=password)
            url = parsed.render_as_string(hide_password=False)
    return url
