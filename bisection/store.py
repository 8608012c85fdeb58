"""A client's durable state: one SQLite database (WAL mode) in a directory given to the client.

The chain is the truth; the database only remembers what a client meant and what it cannot
re-derive from the chain: which generation it claimed for which request, its verdicts, the moves
it sent with their gas, its read offsets, and its **intents** (docs/protocol.md section 8). Every
transaction is preceded by an intent row written and committed before anything is sent: a process
killed at any point finds on restart the intents it had not closed and reconciles each with the
chain (was the nonce used? by which transaction? what does the chain say now?).

The documents (`claims`, `disputes`, plain values) keep the dict interface the clients use
(`store["claims"][id]["status"] = ...; store.save()`); `save()` writes every changed row in one
SQLite transaction, so a crash leaves either the old or the new state, never half of it.

The schema is versioned (`PRAGMA user_version`); `MIGRATIONS[v]` takes a database from v to v+1.
A store is bound to one chain: `bind(identity)` records the chain id, the game address and the hash
of the game's deployment block on first use and refuses a store of another (or a reset) chain.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refute.errors import RefuteError

SCHEMA_VERSION = 1

MIGRATIONS: dict[int, str] = {
    0: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE docs (kind TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL,
                       PRIMARY KEY (kind, key));
    CREATE TABLE moves (seq INTEGER PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE intents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        fn TEXT NOT NULL,            -- the contract function
        subject TEXT NOT NULL,       -- what it acts on: 'claim:3', 'dispute:5', 'request:<key>'
        args TEXT NOT NULL,          -- JSON: what reconciliation needs (e.g. the request)
        nonce INTEGER,               -- the sender's nonce it was (or will be) sent with
        tx_hash TEXT,                -- once the node accepted it
        state TEXT NOT NULL,         -- open | sent | done | failed | dropped
        result TEXT,                 -- JSON: receipt summary or why it closed
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE INDEX intents_open ON intents (state);
    """,
}

OPEN_STATES = ("open", "sent")


class StoreError(RefuteError):
    """The state directory cannot be used: another chain's state, a newer schema, a bad file."""


@dataclass(frozen=True)
class Identity:
    """What a state directory is bound to: a chain, a game, and the block the game was deployed
    in (its hash changes when a chain is reset and the game redeployed at the same address)."""

    chain_id: int
    game: str
    deploy_block: int
    deploy_hash: str


@dataclass
class Intent:
    """One transaction the client meant to send (a row of `intents`)."""

    id: int
    fn: str
    subject: str
    args: dict[str, Any]
    nonce: int | None
    tx_hash: str | None
    state: str
    result: Any
    created: float


class _Docs(dict):
    """A dict whose values are the JSON documents of one kind; `Store.save` writes the changed."""


class Store:
    """A client's SQLite database, with the JSON-document view the clients read and write."""

    FILE = "state.sqlite"
    KINDS = ("claims", "disputes")

    def __init__(self, directory: str | os.PathLike[str], defaults: dict[str, Any]) -> None:
        self.path = Path(directory) / self.FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable state database: {exc}") from None
        self.data: dict[str, Any] = json.loads(json.dumps(defaults))
        self._written: dict[tuple[str, str], str] = {}
        for kind in self.KINDS:
            self.data[kind] = _Docs()
        for kind, key, doc in self.db.execute("SELECT kind, key, doc FROM docs"):
            self._written[(kind, key)] = doc
            if kind in self.KINDS:
                self.data[kind][key] = json.loads(doc)
            else:
                self.data[key] = json.loads(doc)
        self.data["moves"] = [json.loads(d) for (d,) in self.db.execute(
            "SELECT doc FROM moves ORDER BY seq")]  # fmt: skip
        self._moves_written = len(self.data["moves"])

    # --- schema ------------------------------------------------------------------------------

    def _migrate(self) -> None:
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this refute knows up to "
                f"{SCHEMA_VERSION}: upgrade refute"
            )
        while version < SCHEMA_VERSION:
            # one script, one transaction: the schema change and its version number together
            script = MIGRATIONS[version]
            self.db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {version + 1}; COMMIT;"
            )
            version += 1

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # --- documents ---------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def save(self) -> None:
        """Write every changed document and the new moves, in one transaction."""
        rows = []
        for key, value in self.data.items():
            if key in self.KINDS:
                for k, doc in value.items():
                    rows.append((key, str(k), json.dumps(doc, sort_keys=True)))
            elif key != "moves":
                rows.append(("value", key, json.dumps(value, sort_keys=True)))
        changed = [r for r in rows if self._written.get((r[0], r[1])) != r[2]]
        moves = self.data["moves"][self._moves_written :]
        if not changed and not moves:
            return
        with self.transaction():
            self.db.executemany(
                "INSERT INTO docs (kind, key, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET doc = excluded.doc",
                changed,
            )
            self.db.executemany("INSERT INTO moves (doc) VALUES (?)",
                                [(json.dumps(m, sort_keys=True),) for m in moves])  # fmt: skip
        for kind, key, doc in changed:
            self._written[(kind, key)] = doc
        self._moves_written = len(self.data["moves"])

    # --- chain identity ----------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def identity(self) -> Identity | None:
        raw = self.meta("identity")
        return None if raw is None else Identity(**json.loads(raw))

    def bind(self, identity: Identity) -> None:
        """Bind a new store to `identity`, or check that it is the one it was bound to."""
        old = self.identity()
        if old is None:
            self.set_meta("identity", json.dumps(identity.__dict__))
            return
        if old == identity:
            return
        what = [
            f"{name} was {getattr(old, name)}, is now {getattr(identity, name)}"
            for name in ("chain_id", "game", "deploy_block", "deploy_hash")
            if getattr(old, name) != getattr(identity, name)
        ]
        reason = (
            "the chain was reset or reorganised below the game's deployment"
            if (old.chain_id == identity.chain_id and old.game == identity.game)
            else "another chain"
        )
        raise StoreError(
            f"{self.path.parent} holds the state of {reason}: " + "; ".join(what)
            + ". Give a new state directory (or delete this one to start over)."
        )  # fmt: skip

    # --- intents -----------------------------------------------------------------------------

    def open_intent(
        self, fn: str, subject: str, args: dict[str, Any] | None = None, nonce: int | None = None
    ) -> Intent:
        """Write (and commit) the intent to send `fn` about `subject`, before anything is sent."""
        now = time.time()
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO intents (fn, subject, args, nonce, state, created, updated) "
                "VALUES (?, ?, ?, ?, 'open', ?, ?)",
                (fn, subject, json.dumps(args or {}), nonce, now, now),
            )
        return self.intent(int(cur.lastrowid))

    def update_intent(self, intent_id: int, **fields: Any) -> None:
        """Set `state`, `tx_hash`, `nonce` or `result` of an intent (committed at once)."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = [json.dumps(v) if k == "result" else v for k, v in fields.items()]
        with self.transaction():
            self.db.execute(f"UPDATE intents SET {sets}, updated = ? WHERE id = ?",
                            (*values, time.time(), intent_id))  # fmt: skip

    def intent(self, intent_id: int) -> Intent:
        row = self.db.execute("SELECT * FROM intents WHERE id = ?", (intent_id,)).fetchone()
        return _intent(row)

    def intents(self, states: tuple[str, ...] = OPEN_STATES, fn: str | None = None) -> list[Intent]:
        marks = ", ".join("?" for _ in states)
        query = f"SELECT * FROM intents WHERE state IN ({marks})"
        params: list[Any] = list(states)
        if fn is not None:
            query += " AND fn = ?"
            params.append(fn)
        return [_intent(r) for r in self.db.execute(query + " ORDER BY id", params)]

    def open_subjects(self) -> set[str]:
        """Subjects with a transaction in flight (an open or sent intent)."""
        return {i.subject for i in self.intents()}

    def close(self) -> None:
        self.db.close()


def _intent(row: tuple) -> Intent:
    i, fn, subject, args, nonce, tx_hash, state, result, created, _updated = row
    return Intent(i, fn, subject, json.loads(args), nonce, tx_hash, state,
                  None if result is None else json.loads(result), created)  # fmt: skip


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception), on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
