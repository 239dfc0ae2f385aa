"""Container metadata in SQLite (<root>/engine.db, WAL): one row per container, one
transaction per change. A name is UNIQUE in the table, so two creators racing for one name
cannot both win. Exit codes of removed containers stay a few minutes in `exit_codes`, so a
`keel run --rm` whose container was removed by conmon's exit command still learns the code
(podman keeps such a table for the same reason)."""

import json
import os
import sqlite3
import time

from keel.engine.errors import ContainerNotFound, EngineError, NameInUse

_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    image_id TEXT NOT NULL,
    image_name TEXT NOT NULL,
    config TEXT NOT NULL,          -- the OCI runtime config (config.json) as JSON
    options TEXT NOT NULL,         -- what the user asked for: cmd, entrypoint, env, ... as JSON
    labels TEXT NOT NULL,          -- JSON object
    runtime TEXT NOT NULL,         -- path of the OCI runtime binary
    state TEXT NOT NULL,           -- configured, created, running, exited, unknown
    pid INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL NOT NULL DEFAULT 0,
    finished REAL NOT NULL DEFAULT 0,
    log_path TEXT NOT NULL,
    conmon_pid INTEGER NOT NULL DEFAULT 0,
    conmon_start TEXT NOT NULL DEFAULT '',   -- start time of conmon (proc stat field 22)
    boot_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS exit_codes (
    id TEXT PRIMARY KEY,
    code INTEGER NOT NULL,
    time REAL NOT NULL
);
"""

_JSON_COLUMNS = ("config", "options", "labels")
EXIT_CODE_TTL = 300.0


class DB:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        # Two keel processes opening a new database at once race on the switch to WAL and on
        # the schema; SQLite answers "database is locked" there without waiting. Serialise it.
        import fcntl

        lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            if self.conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise EngineError(f"engine database {path}: {e}") from None
        finally:
            os.close(lock)

    def close(self):
        self.conn.close()

    def _tx(self, sql, args=()):
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self.conn.execute(sql, args)
                self.conn.execute("COMMIT")
                return cur
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as e:
            raise EngineError(f"engine database {self.path}: {e}") from None

    @staticmethod
    def _row(row) -> dict:
        d = dict(row)
        for k in _JSON_COLUMNS:
            d[k] = json.loads(d[k])
        return d

    def insert(self, rec: dict) -> None:
        rec = dict(rec)
        for k in _JSON_COLUMNS:
            rec[k] = json.dumps(rec[k])
        cols = ", ".join(rec)
        marks = ", ".join("?" for _ in rec)
        try:
            self._tx(f"INSERT INTO containers ({cols}) VALUES ({marks})", tuple(rec.values()))
        except sqlite3.IntegrityError as e:
            if "containers.name" in str(e):
                raise NameInUse(f"the container name {rec['name']!r} is already in use: "
                                "remove that container or choose another name") from None
            raise EngineError(f"engine database {self.path}: {e}") from None

    def update(self, cid: str, **fields) -> None:
        for k in _JSON_COLUMNS:
            if k in fields:
                fields[k] = json.dumps(fields[k])
        sets = ", ".join(f"{k} = ?" for k in fields)
        cur = self._tx(f"UPDATE containers SET {sets} WHERE id = ?", (*fields.values(), cid))
        if cur.rowcount == 0:
            raise ContainerNotFound(f"no container with id {cid}")

    def delete(self, cid: str, exit_code: int | None = None) -> None:
        """Remove the row; keep its exit code (when known) in exit_codes for a while."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                self.conn.execute("DELETE FROM containers WHERE id = ?", (cid,))
                self.conn.execute("DELETE FROM exit_codes WHERE time < ?", (now - EXIT_CODE_TTL,))
                if exit_code is not None:
                    self.conn.execute("INSERT OR REPLACE INTO exit_codes (id, code, time) VALUES (?, ?, ?)",
                                      (cid, exit_code, now))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise EngineError(f"engine database {self.path}: {e}") from None

    def get(self, cid: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM containers WHERE id = ?", (cid,)).fetchone()
        return self._row(row) if row else None

    def find(self, ref: str) -> dict:
        """A container by full id, name, or unique id prefix."""
        if not ref:
            raise ContainerNotFound("no container named ''")
        row = self.conn.execute("SELECT * FROM containers WHERE id = ? OR name = ?", (ref, ref)).fetchone()
        if row:
            return self._row(row)
        if all(c in "0123456789abcdef" for c in ref):
            rows = self.conn.execute("SELECT * FROM containers WHERE id LIKE ?", (ref + "%",)).fetchall()
            if len(rows) == 1:
                return self._row(rows[0])
            if len(rows) > 1:
                raise ContainerNotFound(f"{ref}: more than one container has this id prefix")
        raise ContainerNotFound(f"no container with name or id {ref!r} found")

    def all(self) -> list[dict]:
        return [self._row(r) for r in self.conn.execute("SELECT * FROM containers ORDER BY created")]

    def exit_code(self, cid: str) -> int | None:
        row = self.conn.execute("SELECT code FROM exit_codes WHERE id = ?", (cid,)).fetchone()
        return row[0] if row else None
