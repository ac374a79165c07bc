"""SQLite schema and connection handling for one project (WAL, foreign keys, one transaction per change)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    id      TEXT PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE COLLATE NOCASE,
    kind    TEXT NOT NULL DEFAULT 'regular' CHECK (kind IN ('regular', 'negative')),
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id            TEXT PRIMARY KEY,
    sha256        TEXT NOT NULL UNIQUE,
    file          TEXT NOT NULL,
    original_name TEXT NOT NULL,
    format        TEXT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    size_bytes    INTEGER NOT NULL,
    created       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS image_tags (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    tag_id   TEXT NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
    PRIMARY KEY (image_id, tag_id)
);
CREATE INDEX IF NOT EXISTS image_tags_by_tag ON image_tags(tag_id);
-- Regions are used by detection projects (normalised left, top, width, height).
CREATE TABLE IF NOT EXISTS regions (
    id       TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    tag_id   TEXT NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
    left_    REAL NOT NULL,
    top      REAL NOT NULL,
    width    REAL NOT NULL,
    height   REAL NOT NULL
);
-- Added with region support; IF NOT EXISTS creates them when an older project is opened.
CREATE INDEX IF NOT EXISTS regions_by_image ON regions(image_id);
CREATE INDEX IF NOT EXISTS regions_by_tag ON regions(tag_id);
CREATE TABLE IF NOT EXISTS iterations (
    number  INTEGER PRIMARY KEY,
    id      TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    info    TEXT NOT NULL
);
-- Added with the training API (IF NOT EXISTS: older projects get them when opened).
-- A tag's description (the hosted API's Tag.description); no row = "".
CREATE TABLE IF NOT EXISTS tag_descriptions (
    tag_id      TEXT PRIMARY KEY REFERENCES tags(id) ON DELETE CASCADE,
    description TEXT NOT NULL
);
-- An image's metadata (the hosted API's Image.metadata): string keys and values.
CREATE TABLE IF NOT EXISTS image_metadata (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (image_id, key)
);
-- Images sent to a prediction route with storing on (see edgevision.store.predictions): the file is
-- content-addressed under predictions/, results is the ImagePrediction's "predictions" JSON list.
CREATE TABLE IF NOT EXISTS predictions (
    id           TEXT PRIMARY KEY,
    sha256       TEXT NOT NULL,
    file         TEXT NOT NULL,
    format       TEXT NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    iteration_id TEXT NOT NULL,
    created      TEXT NOT NULL,
    uncertainty  REAL NOT NULL,
    results      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_by_created ON predictions(created);
"""


#: How long a write waits for another process's write transaction to end before "database is
#: locked". Readers never wait (WAL); writers queue behind one another, and the longest writer is an
#: import, which holds the lock only to move already written files into place and insert rows.
BUSY_TIMEOUT_S = 120.0


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) a project database with WAL journaling and foreign keys on."""
    # check_same_thread=False: the training API server uses one connection from its request threads, one
    # at a time under its own lock (sqlite3 itself is built thread-safe).
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run a block in one IMMEDIATE transaction: all of it is committed, or none (also on Ctrl-C)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def try_transaction(conn: sqlite3.Connection, wait_s: float = 0.2) -> Iterator[bool]:
    """Like :func:`transaction`, but waits at most ``wait_s`` for the write lock; yields False
    (and runs no transaction) when another process holds it. For clean-ups that can wait."""
    conn.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        acquired = False
    else:
        acquired = True
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    if not acquired:
        yield False
        return
    try:
        yield True
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
