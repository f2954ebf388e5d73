"""One session scope for rnntune's own tables (Optuna keeps its own)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from rnntune.exceptions import DatabaseUnavailableError, first_line

from ._url import mask_url


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """Commit on success, roll back on error, always close; a lost connection (OperationalError)
    becomes DatabaseUnavailableError, which a worker waits out."""
    session = Session(bind=engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except OperationalError as e:
        session.rollback()
        raise DatabaseUnavailableError(
            f"lost the study database at {mask_url(str(engine.url))} ({first_line(e)}): "
            "check that it is running and reachable, then rerun"
        ) from e
    except SQLAlchemyError:
        session.rollback()
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
