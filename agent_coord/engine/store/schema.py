"""Schema and migrations, versioned by `PRAGMA user_version`. Append a migration; never edit one."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the coordination core
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('fencing_token', 0), ('slot_seq', 0);

    CREATE TABLE repos (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        pool_root TEXT NOT NULL,
        created_at REAL NOT NULL
    );

    CREATE TABLE slots (
        id TEXT PRIMARY KEY,
        repo_id INTEGER NOT NULL REFERENCES repos(id),
        path TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL
            CHECK (state IN ('FREE', 'ALLOCATING', 'BUSY', 'RELEASING', 'QUARANTINED')),
        version INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        branch TEXT,
        fencing_token INTEGER,
        lease_expires_at REAL,
        since REAL,
        released_at REAL,
        task TEXT,
        rescue_ref TEXT,
        setup_done INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    -- One live allocation per branch and repository, enforced by the database itself.
    CREATE UNIQUE INDEX slots_branch_held ON slots (repo_id, branch)
        WHERE state IN ('ALLOCATING', 'BUSY', 'RELEASING');
    CREATE INDEX slots_owner ON slots (owner);

    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        boot_id TEXT NOT NULL,
        pid INTEGER NOT NULL,
        pid_create_time REAL NOT NULL,
        server_pid INTEGER NOT NULL,
        server_create_time REAL NOT NULL,
        repo_id INTEGER,
        status TEXT NOT NULL DEFAULT 'active',
        note TEXT,
        started_at REAL NOT NULL,
        last_heartbeat REAL NOT NULL,
        lease_expires_at REAL NOT NULL
    );

    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        agent_id TEXT,
        action TEXT NOT NULL,
        repo_id INTEGER,
        worktree_id TEXT,
        branch TEXT,
        outcome TEXT NOT NULL,
        duration_ms REAL,
        fencing_token INTEGER,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_ts ON events (ts);
    -- Append-only: the log is evidence, so the database refuses edits and deletes.
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL,
        version INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 2: process start times counted from boot, which a step of the wall clock does not move (see
    # liveness.process_state). A table beside `agents`, not new columns: a server of the previous
    # version still running reads `SELECT * FROM agents` into its own record type and would fail on a
    # column it does not know. Each row names the process it describes (pid and wall-clock create time
    # as registered), because such a server re-registering an id leaves this table as it was: a start
    # counts only while its agent row still describes the same process (see store/rows.AGENT_SELECT).
    """
    CREATE TABLE agent_starts (
        agent_id TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
        pid INTEGER NOT NULL,
        pid_create_time REAL NOT NULL,
        pid_start_s REAL,
        server_pid INTEGER NOT NULL,
        server_create_time REAL NOT NULL,
        server_start_s REAL
    );
    """,
    # 3: the conflict radar (engine/radar). One row per live allocation it snapshotted, the paths each
    # changed since its base (the edit guard looks a path up here), and one row per pair it compared.
    # Rows carry the fencing token of the allocation they describe: a reader joins them to `slots` on
    # it, so a row left from a released allocation is never shown, even before the next pass drops it.
    """
    CREATE TABLE radar_trees (
        worktree_id TEXT PRIMARY KEY,
        fencing_token INTEGER NOT NULL,
        repo_id INTEGER NOT NULL,
        head TEXT NOT NULL,
        tree TEXT NOT NULL,
        base_ref TEXT,
        base_commit TEXT,
        updated_at REAL NOT NULL
    );
    CREATE TABLE radar_changes (
        worktree_id TEXT NOT NULL,
        repo_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (worktree_id, path)
    );
    CREATE INDEX radar_changes_path ON radar_changes (repo_id, path);
    -- b is another worktree id, or "base:<ref>" for a's comparison with its base branch.
    CREATE TABLE radar_pairs (
        a TEXT NOT NULL,
        b TEXT NOT NULL,
        repo_id INTEGER NOT NULL,
        a_token INTEGER NOT NULL,
        b_token INTEGER,
        a_state TEXT NOT NULL,
        b_state TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('none', 'overlap', 'conflict')),
        detail TEXT NOT NULL,
        since REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (a, b)
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
