"""Storage URLs: one normalisation, used by every process that opens the database."""

from __future__ import annotations

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
    except ArgumentError as e:
        raise ConfigError(
            f"cannot parse storage URL {mask_url(text)!r}: use sqlite:///FILE.db or "
            "postgresql://user:password@host:5432/db"
        ) from e
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
    except ArgumentError:
        return "<unparseable URL>"
