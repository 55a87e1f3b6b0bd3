"""Model registry: a SQLite index plus one versioned artifact folder per model.

Writes are atomic. Files are written into a temporary folder and moved into place with
``os.replace``; only then is the row committed, in the same ``BEGIN IMMEDIATE`` transaction
that allocated the version number. A crash before the commit leaves at most an orphan folder
(removed on the spot when the failure is an exception), never a row without files. The champion
alias moves under the same lock, and every move is kept in the alias history. Rollouts (a
challenger serving beside the champion before it is promoted or rolled back) are kept in the
``rollouts`` table: at most one runs per model, and ending one moves the alias (or not) in the same
transaction, so the alias and the rollout history always agree. Versions that wait for a reviewer
(``gates.require_approval``) have a row in ``approvals``; a decision updates that row and the
version's lineage (``lineage["approval"]``) in one transaction. The gate report of each run is
indexed under the version the run registered (or found again) in ``reports``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from conveyor.core.timeutil import utcnow

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    model_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    run_id TEXT,
    artifact_dir TEXT NOT NULL,
    metrics TEXT NOT NULL,
    lineage TEXT NOT NULL,
    gate TEXT NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, model_hash)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    previous INTEGER,
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    run_id TEXT
);
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    strategy TEXT NOT NULL,
    champion INTEGER NOT NULL,
    challenger INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    ended_at TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    state TEXT NOT NULL,
    metrics TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_running ON rollouts (name) WHERE outcome = 'running';
CREATE TABLE IF NOT EXISTS reports (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version, run_id)
);
CREATE TABLE IF NOT EXISTS withdrawals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    model_hash TEXT NOT NULL,
    event TEXT NOT NULL,
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    by TEXT,
    rollout_id TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    run_id TEXT,
    status TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    decided_at TEXT,
    by TEXT,
    reason TEXT,
    outcome TEXT,
    PRIMARY KEY (name, version)
);
"""


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    model_hash: str
    created_at: str
    run_id: str | None
    artifact_dir: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    gate: dict[str, Any]
    is_champion: bool = False

    def file(self, name: str) -> Path:
        return Path(self.artifact_dir) / name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "registry.sqlite"
        with self._connect() as con:
            con.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=60000")
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from the start."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    # ---- reads ----------------------------------------------------------------------------------
    def _row(self, r: sqlite3.Row, champion: int | None) -> ModelVersion:
        return ModelVersion(
            name=r["name"], version=r["version"], model_hash=r["model_hash"], created_at=r["created_at"],
            run_id=r["run_id"], artifact_dir=r["artifact_dir"], metrics=json.loads(r["metrics"]),
            lineage=json.loads(r["lineage"]), gate=json.loads(r["gate"]), is_champion=r["version"] == champion,
        )

    def alias(self, name: str, alias: str = "champion") -> int | None:
        con = self._connect()
        try:
            r = con.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
        finally:
            con.close()
        return None if r is None else int(r["version"])

    def list(self, name: str) -> list[ModelVersion]:
        champ = self.alias(name)
        con = self._connect()
        try:
            rows = con.execute("SELECT * FROM versions WHERE name=? ORDER BY version", (name,)).fetchall()
        finally:
            con.close()
        return [self._row(r, champ) for r in rows]

    def get(self, name: str, version: int) -> ModelVersion:
        con = self._connect()
        try:
            r = con.execute("SELECT * FROM versions WHERE name=? AND version=?", (name, version)).fetchone()
        finally:
            con.close()
        if r is None:
            known = [v.version for v in self.list(name)]
            raise RegistryError(f"model {name!r} has no version {version}; versions: {known or 'none'}")
        return self._row(r, self.alias(name))

    def find_by_hash(self, name: str, model_hash: str) -> ModelVersion | None:
        con = self._connect()
        try:
            r = con.execute("SELECT * FROM versions WHERE name=? AND model_hash=?", (name, model_hash)).fetchone()
        finally:
            con.close()
        return None if r is None else self._row(r, self.alias(name))

    def champion(self, name: str) -> ModelVersion | None:
        v = self.alias(name)
        return None if v is None else self.get(name, v)

    def alias_history(self, name: str, alias: str = "champion") -> list[dict[str, Any]]:
        con = self._connect()
        try:
            rows = con.execute(
                "SELECT version, previous, at, reason, run_id FROM alias_history WHERE name=? AND alias=? ORDER BY id",
                (name, alias),
            ).fetchall()
        finally:
            con.close()
        return [dict(r) for r in rows]

    # ---- writes ---------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        files: dict[str, str | Path],
        model_hash: str,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        gate: dict[str, Any],
        run_id: str | None = None,
    ) -> ModelVersion:
        """Add a version (idempotent: the same model hash returns the existing version)."""
        existing = self.find_by_hash(name, model_hash)
        if existing is not None:
            return existing
        for dest, src in files.items():
            if not Path(src).is_file():
                raise RegistryError(f"cannot register {name}: artifact {dest!r} source {src} is missing")
        model_root = self.root / name
        model_root.mkdir(parents=True, exist_ok=True)
        with self._write() as con:
            r = con.execute("SELECT * FROM versions WHERE name=? AND model_hash=?", (name, model_hash)).fetchone()
            if r is not None:  # registered by a concurrent cycle while we waited for the lock
                return self._row(r, None)
            version = int(con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name=?", (name,)).fetchone()[0])
            final = model_root / f"v{version:04d}"
            if final.exists():  # an orphan from a crash between rename and commit: no row owns it
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(dir=model_root, prefix=f".v{version:04d}."))
            try:
                for dest, src in files.items():
                    target = tmp / dest
                    if not target.resolve().is_relative_to(tmp.resolve()):
                        raise RegistryError(f"cannot register {name}: artifact name {dest!r} leaves the version folder")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
                record = {"name": name, "version": version, "model_hash": model_hash, "metrics": metrics,
                          "lineage": lineage, "gate": gate, "run_id": run_id}
                (tmp / "version.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
                for f in tmp.rglob("*"):
                    if f.is_file():
                        with open(f, "rb") as fh:
                            os.fsync(fh.fileno())
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            try:
                created = utcnow().isoformat(timespec="seconds")
                con.execute(
                    "INSERT INTO versions (name, version, model_hash, created_at, run_id, artifact_dir, metrics, lineage, gate) "
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    (name, version, model_hash, created, run_id, str(final),
                     json.dumps(metrics, default=str), json.dumps(lineage, default=str), json.dumps(gate, default=str)),
                )
                self._before_commit(name, version)
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
        return self.get(name, version)

    def _before_commit(self, name: str, version: int) -> None:
        """Hook between the file move and the row commit (tests inject failures here)."""

    def set_alias(self, name: str, version: int, *, alias: str = "champion", reason: str, run_id: str | None = None,
                  person: str | None = None, withdraw_previous: bool = False) -> int | None:
        """Point ``alias`` at ``version``; returns the previous version. History is kept.

        The champion alias never moves to a rolled-back version unless ``person`` does it (a manual
        rollback), which is recorded as that person's release of it. ``withdraw_previous`` marks the
        version the champion moves away from as rolled back (a manual rollback), in the same
        transaction."""
        with self._write() as con:
            previous = self._move_alias(con, name, version, alias, reason, run_id, person=person)
            if withdraw_previous and previous is not None and previous != version:
                self._withdraw(con, name, previous, reason=reason, source="rollback", by=person)
            return previous

    def _move_alias(self, con: sqlite3.Connection, name: str, version: int, alias: str, reason: str,
                    run_id: str | None, person: str | None = None) -> int | None:
        if con.execute("SELECT 1 FROM versions WHERE name=? AND version=?", (name, version)).fetchone() is None:
            raise RegistryError(f"model {name!r} has no version {version}")
        r = con.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
        previous = None if r is None else int(r["version"])
        if previous == version:
            return previous
        if alias == "champion":
            self._check_withdrawn(con, name, version, person=person, reason=reason)
        at = utcnow().isoformat(timespec="seconds")
        con.execute(
            "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?,?,?,?) "
            "ON CONFLICT(name, alias) DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at",
            (name, alias, version, at),
        )
        con.execute(
            "INSERT INTO alias_history (name, alias, version, previous, at, reason, run_id) VALUES (?,?,?,?,?,?,?)",
            (name, alias, version, previous, at, reason, run_id),
        )
        return previous

    # ---- gate reports ---------------------------------------------------------------------------
    def add_report(self, name: str, version: int, path: str | Path, run_id: str | None = None) -> None:
        """Record the gate report (HTML) a run rendered for ``version``; a re-render replaces the run's entry."""
        with self._write() as con:
            if con.execute("SELECT 1 FROM versions WHERE name=? AND version=?", (name, version)).fetchone() is None:
                raise RegistryError(f"model {name!r} has no version {version}")
            con.execute(
                "INSERT INTO reports (name, version, run_id, path, created_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(name, version, run_id) DO UPDATE SET path=excluded.path, created_at=excluded.created_at",
                (name, version, run_id or "", str(path), utcnow().isoformat(timespec="seconds")),
            )

    def reports(self, name: str) -> dict[int, str]:
        """``version -> report path`` for every version with a report: the report of the run that
        registered the version when there is one, else the latest (a later run that found the same
        model also renders one)."""
        con = self._connect()
        try:
            rows = con.execute(
                "SELECT r.version, r.path FROM reports r LEFT JOIN versions v ON v.name = r.name AND v.version = r.version "
                "WHERE r.name=? ORDER BY r.version, (r.run_id = COALESCE(v.run_id, '')), r.created_at, r.rowid",
                (name,),
            ).fetchall()
        finally:
            con.close()
        return {int(r["version"]): r["path"] for r in rows}  # the last row per version wins

    def report(self, name: str, version: int) -> str | None:
        """The gate report of ``version`` (see :meth:`reports`), or None."""
        return self.reports(name).get(int(version))

    # ---- rollouts -------------------------------------------------------------------------------
    @staticmethod
    def _rollout_row(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        d["state"] = json.loads(d["state"])
        d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else None
        return d

    def rollouts(self, name: str) -> list[dict[str, Any]]:
        """Every rollout of ``name``, oldest first: id, strategy, champion, challenger, start, end, outcome
        (running, promoted or rolled_back), reason, the last rollout state and the metrics it ended on."""
        con = self._connect()
        try:
            rows = con.execute("SELECT * FROM rollouts WHERE name=? ORDER BY started_at, rowid", (name,)).fetchall()
        finally:
            con.close()
        return [self._rollout_row(r) for r in rows]

    def running_rollout(self, name: str) -> dict[str, Any] | None:
        con = self._connect()
        try:
            r = con.execute("SELECT * FROM rollouts WHERE name=? AND outcome='running'", (name,)).fetchone()
        finally:
            con.close()
        return None if r is None else self._rollout_row(r)

    def begin_rollout(self, name: str, state: dict[str, Any], *, person: str | None = None,
                      reason: str | None = None) -> dict[str, Any]:
        """Record a running rollout (``state`` is the rollout state file's content). Refused while
        another rollout of ``name`` runs, when the champion is not ``state['champion']``, when the
        challenger is the champion or not registered, or when the challenger was rolled back, unless
        ``person`` sends it out again with a ``reason`` (recorded in the same transaction)."""
        with self._write() as con:
            r = con.execute("SELECT * FROM rollouts WHERE name=? AND outcome='running'", (name,)).fetchone()
            if r is not None:
                raise RegistryError(
                    f"a rollout of {name!r} is already running: {r['rollout_id']} ({r['strategy']}, champion "
                    f"v{r['champion']}, challenger v{r['challenger']}, until {r['ends_at']})")
            for v in (state["champion"], state["challenger"]):
                if con.execute("SELECT 1 FROM versions WHERE name=? AND version=?", (name, v)).fetchone() is None:
                    raise RegistryError(f"model {name!r} has no version {v}")
            a = con.execute("SELECT version FROM aliases WHERE name=? AND alias='champion'", (name,)).fetchone()
            champion = None if a is None else int(a["version"])
            if champion != state["champion"]:
                raise RegistryError(f"the champion of {name!r} is v{champion}, not v{state['champion']}")
            if state["challenger"] == champion:
                raise RegistryError(f"v{champion} is already the champion of {name!r}: nothing to roll out")
            if person is not None and not (reason or "").strip():
                raise RegistryError("sending a rolled-back version out again needs a reason")
            self._check_withdrawn(con, name, int(state["challenger"]), person=person, reason=reason or "")
            con.execute(
                "INSERT INTO rollouts (rollout_id, name, strategy, champion, challenger, started_at, ends_at, ended_at, "
                "outcome, reason, state, metrics) VALUES (?,?,?,?,?,?,?,NULL,'running',NULL,?,NULL)",
                (state["rollout_id"], name, state["strategy"], state["champion"], state["challenger"],
                 state["started_at"], state["ends_at"], json.dumps(state, default=str)),
            )
        return self.rollout(state["rollout_id"])

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        con = self._connect()
        try:
            r = con.execute("SELECT * FROM rollouts WHERE rollout_id=?", (rollout_id,)).fetchone()
        finally:
            con.close()
        if r is None:
            raise RegistryError(f"no rollout {rollout_id!r}")
        return self._rollout_row(r)

    def end_rollout(self, name: str, rollout_id: str, *, outcome: str, reason: str, state: dict[str, Any],
                    metrics: dict[str, Any] | None = None, alias_to: int | None = None,
                    alias_reason: str | None = None, person: str | None = None) -> tuple[dict[str, Any], bool]:
        """End a running rollout and, in the same transaction, point the champion alias at
        ``alias_to`` (the challenger when promoted; a manual rollback's target). Returns the rollout's
        row and whether this call ended it (False: it had ended already, and nothing changed)."""
        if outcome not in ("promoted", "rolled_back"):
            raise ValueError(f"outcome must be promoted or rolled_back, got {outcome!r}")
        with self._write() as con:
            r = con.execute("SELECT * FROM rollouts WHERE rollout_id=? AND name=?", (rollout_id, name)).fetchone()
            if r is None:
                raise RegistryError(f"model {name!r} has no rollout {rollout_id!r}")
            if r["outcome"] != "running":
                return self._rollout_row(r), False
            if outcome == "rolled_back":
                self._withdraw(con, name, int(r["challenger"]), reason=reason, source="rollout", rollout_id=rollout_id,
                               by=person)
            if alias_to is not None:
                previous = self._move_alias(con, name, alias_to, "champion", alias_reason or reason, None, person=person)
                if person is not None and previous not in (None, alias_to, int(r["challenger"])):
                    self._withdraw(con, name, previous, reason=alias_reason or reason, source="rollback", by=person)
            con.execute(
                "UPDATE rollouts SET ended_at=?, outcome=?, reason=?, state=?, metrics=? WHERE rollout_id=?",
                (state.get("updated_at") or utcnow().isoformat(timespec="seconds"), outcome, reason, json.dumps(state, default=str),
                 json.dumps(metrics, default=str) if metrics is not None else None, rollout_id),
            )
            row = self._rollout_row(con.execute("SELECT * FROM rollouts WHERE rollout_id=?", (rollout_id,)).fetchone())
        return row, True

    # ---- rollback memory --------------------------------------------------------------------------
    # A version that was rolled back (its rollout's alerts, or a manual rollback moving the champion
    # away from it) is withdrawn: a later cycle that produces it (the same weights are the same
    # version) is rejected, and no rollout or promotion sends it out again until a person releases
    # it with a reason. Each event is one row; the latest decides.
    @staticmethod
    def _withdraw(con: sqlite3.Connection, name: str, version: int, *, reason: str, source: str,
                  rollout_id: str | None = None, by: str | None = None) -> None:
        r = con.execute("SELECT model_hash FROM versions WHERE name=? AND version=?", (name, version)).fetchone()
        if r is None:
            raise RegistryError(f"model {name!r} has no version {version}")
        con.execute("INSERT INTO withdrawals (name, version, model_hash, event, at, reason, source, by, rollout_id) "
                    "VALUES (?, ?, ?, 'rolled_back', ?, ?, ?, ?, ?)",
                    (name, version, r["model_hash"], utcnow().isoformat(timespec="seconds"), reason, source, by,
                     rollout_id))

    @staticmethod
    def _withdrawal_row(r: sqlite3.Row | None) -> dict[str, Any] | None:
        return dict(r) if r is not None and r["event"] == "rolled_back" else None

    @staticmethod
    def withdrawn_message(w: dict[str, Any]) -> str:
        """What the gate, a refused rollout and a refused promotion say about a rolled-back version."""
        how = "by its rollout's alerts" if w["source"] == "rollout" else "by a manual rollback"
        return f"v{w['version']} was rolled back at {w['at']} ({how}): {w['reason']}"

    def _check_withdrawn(self, con: sqlite3.Connection, name: str, version: int, *, person: str | None,
                         reason: str) -> None:
        """Refuse to send a rolled-back version out again, unless a person does it (recorded)."""
        w = self._withdrawal_row(con.execute("SELECT * FROM withdrawals WHERE name=? AND version=? ORDER BY id DESC "
                                             "LIMIT 1", (name, version)).fetchone())
        if w is None:
            return
        if person is None:
            raise RegistryError(f"{self.withdrawn_message(w)}; only a person sends it out again "
                                f"(`conveyor rollout start SPEC --version {version} --force --reason TEXT`)")
        self._release(con, name, version, by=person, reason=reason)

    def withdrawal(self, name: str, version: int | None = None, model_hash: str | None = None) -> dict[str, Any] | None:
        """The standing withdrawal of a version (by number or model hash): when, why and how it was
        rolled back; None when it never was, or a person released it since."""
        if (version is None) == (model_hash is None):
            raise ValueError("give version or model_hash")
        with self._connect() as con:
            if version is not None:
                r = con.execute("SELECT * FROM withdrawals WHERE name=? AND version=? ORDER BY id DESC LIMIT 1",
                                (name, version)).fetchone()
            else:
                r = con.execute("SELECT * FROM withdrawals WHERE name=? AND model_hash=? ORDER BY id DESC LIMIT 1",
                                (name, model_hash)).fetchone()
        return self._withdrawal_row(r)

    def withdrawals(self, name: str) -> list[dict[str, Any]]:
        """Every rollback and release of the pipeline's versions, oldest first."""
        with self._connect() as con:
            return [dict(r) for r in con.execute("SELECT * FROM withdrawals WHERE name=? ORDER BY id", (name,))]

    def withdraw(self, name: str, version: int, *, reason: str, source: str = "manual", by: str | None = None) -> None:
        """Mark ``version`` as rolled back (outside a rollout or an alias move)."""
        with self._write() as con:
            self._withdraw(con, name, version, reason=reason, source=source, by=by)

    @staticmethod
    def _release(con: sqlite3.Connection, name: str, version: int, *, by: str, reason: str) -> None:
        r = con.execute("SELECT model_hash FROM versions WHERE name=? AND version=?", (name, version)).fetchone()
        if r is None:
            raise RegistryError(f"model {name!r} has no version {version}")
        con.execute("INSERT INTO withdrawals (name, version, model_hash, event, at, reason, source, by) "
                    "VALUES (?, ?, ?, 'released', ?, ?, 'person', ?)",
                    (name, version, r["model_hash"], utcnow().isoformat(timespec="seconds"), reason, by))

    # ---- approvals (gates.require_approval) -----------------------------------------------------
    # One row per version that waited for a reviewer: pending, then approved or rejected with who,
    # when and why. The decision is also written into the version's lineage (``lineage["approval"]``)
    # in the same transaction; the version folder (``version.json``) is immutable and does not get it.
    APPROVAL_STATUSES = ("pending", "approved", "rejected")

    @staticmethod
    def _approval_lineage(con: sqlite3.Connection, name: str, version: int, approval: dict[str, Any]) -> None:
        r = con.execute("SELECT lineage FROM versions WHERE name=? AND version=?", (name, version)).fetchone()
        if r is None:
            raise RegistryError(f"model {name!r} has no version {version}")
        lineage = json.loads(r["lineage"])
        lineage["approval"] = approval
        con.execute("UPDATE versions SET lineage=? WHERE name=? AND version=?",
                    (json.dumps(lineage, default=str), name, version))

    @staticmethod
    def _approval_record(r: sqlite3.Row) -> dict[str, Any]:
        return {"status": r["status"], "by": r["by"], "at": r["decided_at"], "reason": r["reason"],
                "requested_at": r["requested_at"], "run_id": r["run_id"], "outcome": r["outcome"]}

    def request_approval(self, name: str, version: int, run_id: str | None) -> tuple[dict[str, Any], bool]:
        """Record that ``version`` waits for a reviewer. Returns the approval row and whether this call
        created it (False: the version already has one, pending or decided, which is left as it is)."""
        with self._write() as con:
            r = con.execute("SELECT * FROM approvals WHERE name=? AND version=?", (name, version)).fetchone()
            if r is not None:
                return dict(r), False
            con.execute("INSERT INTO approvals (name, version, run_id, status, requested_at) "
                        "VALUES (?,?,?,'pending',?)", (name, version, run_id, utcnow().isoformat(timespec="seconds")))
            r = con.execute("SELECT * FROM approvals WHERE name=? AND version=?", (name, version)).fetchone()
            self._approval_lineage(con, name, version, self._approval_record(r))
        return dict(r), True

    def approval(self, name: str, version: int) -> dict[str, Any] | None:
        con = self._connect()
        try:
            r = con.execute("SELECT * FROM approvals WHERE name=? AND version=?", (name, version)).fetchone()
        finally:
            con.close()
        return None if r is None else dict(r)

    def approvals(self, name: str, status: str | None = None) -> list[dict[str, Any]]:
        """The approval rows of ``name`` (all, or those with ``status``), by version."""
        con = self._connect()
        try:
            q, args = "SELECT * FROM approvals WHERE name=?", [name]
            if status is not None:
                q, args = q + " AND status=?", args + [status]
            rows = con.execute(q + " ORDER BY version", args).fetchall()
        finally:
            con.close()
        return [dict(r) for r in rows]

    def decide_approval(self, name: str, version: int, *, status: str, by: str,
                        reason: str | None = None) -> dict[str, Any]:
        """Approve or reject a pending ``version``: the approval row and the version's lineage change in
        one transaction. Refused (RegistryError) when there is no request or it was already decided."""
        if status not in ("approved", "rejected"):
            raise ValueError(f"status must be approved or rejected, got {status!r}")
        with self._write() as con:
            r = con.execute("SELECT * FROM approvals WHERE name=? AND version=?", (name, version)).fetchone()
            if r is None:
                raise RegistryError(f"v{version} of {name!r} has no approval request")
            if r["status"] != "pending":
                why = f": {r['reason']}" if r["reason"] else ""
                raise RegistryError(f"v{version} of {name!r} was already {r['status']} by {r['by']} at "
                                    f"{r['decided_at']}{why}")
            con.execute("UPDATE approvals SET status=?, by=?, reason=?, decided_at=? WHERE name=? AND version=?",
                        (status, by, reason, utcnow().isoformat(timespec="seconds"), name, version))
            r = con.execute("SELECT * FROM approvals WHERE name=? AND version=?", (name, version)).fetchone()
            self._approval_lineage(con, name, version, self._approval_record(r))
        return dict(r)

    def set_approval_outcome(self, name: str, version: int, outcome: str) -> dict[str, Any]:
        """What an approval did (promoted, rollout started, ...), in the row and the lineage, in one transaction."""
        with self._write() as con:
            con.execute("UPDATE approvals SET outcome=? WHERE name=? AND version=?", (outcome, name, version))
            r = con.execute("SELECT * FROM approvals WHERE name=? AND version=?", (name, version)).fetchone()
            if r is None:
                raise RegistryError(f"v{version} of {name!r} has no approval request")
            self._approval_lineage(con, name, version, self._approval_record(r))
        return dict(r)
