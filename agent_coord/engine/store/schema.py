"""Schema and migrations, versioned by `PRAGMA user_version`. Append a migration; never edit one."""

from __future__ import annotations

BUCKET_S = 3600
"""Width of a metrics rollup bucket (bucket = floor(ts / BUCKET_S))."""
DEFAULT_KEEP_S = 8 * 86400
"""Raw events younger than this are append-only (the default metrics window plus a day)."""
CALLER_ERROR_CODES = ("INVALID_BRANCH", "NOT_A_REPOSITORY", "INVALID_ARGUMENT")

# Conditions over an event row `{e}` (NEW in the trigger, the table in the backfill); they mirror the
# definitions of observe/metrics.py, whose test checks the two agree.
_ATTEMPT = "({e}.action = 'allocate' AND {e}.outcome NOT IN (" + ", ".join(f"'{c}'" for c in CALLER_ERROR_CODES) + "))"
_SUCCESS = "({e}.action = 'allocate' AND {e}.outcome = 'ok')"
_BRANCH_CONFLICT = "({e}.action = 'allocate' AND {e}.outcome = 'BRANCH_CONFLICT')"
# Seconds since the epoch by SQLite's clock (`unixepoch('subsec')` needs SQLite 3.42).
SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
# A slot's transition marked as it happens (migration 9): the mark of the one before goes.
_MARK_TRANSITION = f"""
        DELETE FROM slot_workers WHERE slot_id = NEW.id;
        INSERT INTO slot_workers (slot_id, version, state, since)
            SELECT NEW.id, NEW.version, NEW.state, {SQLITE_NOW}
            WHERE NEW.state IN ('ALLOCATING', 'RELEASING');
"""  # noqa: S608
# inf is excluded by the range, NaN is stored as NULL.
_TIMED = _ATTEMPT + " AND {e}.duration_ms BETWEEN -1e308 AND 1e308"
_OPENS = "(({e}.action = 'allocate' AND {e}.outcome = 'ok') OR ({e}.action = 'adopt' AND {e}.outcome = 'BUSY'))"
_CLOSES = "(({e}.action = 'release' AND {e}.outcome = 'ok') OR {e}.action = 'reclaim')"
# Unix time now, in any SQLite version (unixepoch() needs 3.38).
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


def _bucket(ts: str) -> str:
    return f"CAST(({ts}) / {BUCKET_S} AS INTEGER)"


def _offset(ts: str) -> str:
    """Seconds from the start of the bucket: sums of these keep their precision, sums of epochs would not."""
    return f"(({ts}) - {_bucket(ts)} * {BUCKET_S})"


def _bin(ms: str) -> str:
    """A latency's histogram bin: its value truncated to two significant digits (bins 1-10 % wide). Plain
    arithmetic, no math functions: the trigger runs in every process that appends, whatever its SQLite."""
    steps = " ".join(
        f"WHEN {ms} < {10.0 ** (k + 2):g} THEN CAST({ms} / {10.0**k:g} AS INTEGER) * {10.0**k:g}" for k in range(-2, 8)
    )
    return f"(CASE WHEN {ms} < 0.1 THEN {ms} {steps} ELSE {ms} END)"


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
    # 4: metrics that cost the same at any age, and retention. Rollups per hour of the event log,
    # maintained by a trigger in the very transaction that appends the event: a server of the
    # previous version still running appends through the same trigger, so the rollups never miss an
    # event. Tables beside `events`, never columns in it (see docs/decisions.md, "Schema changes").
    # The append-only rule becomes "append-only inside the retention period": a delete of an event
    # younger than `meta.events_keep_s` is refused by the database itself.
    # Built from this module's constants only.
    f"""
    CREATE TABLE metric_buckets (
        bucket INTEGER PRIMARY KEY,
        first_ts REAL NOT NULL,
        event_count INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        successes INTEGER NOT NULL,
        branch_conflicts INTEGER NOT NULL,
        cas_lost INTEGER NOT NULL,
        agent_dead INTEGER NOT NULL,
        agent_stale INTEGER NOT NULL
    );
    CREATE TABLE metric_latency (
        bucket INTEGER NOT NULL,
        bin REAL NOT NULL,
        n INTEGER NOT NULL,
        max_ms REAL NOT NULL,
        PRIMARY KEY (bucket, bin)
    ) WITHOUT ROWID;
    CREATE TABLE metric_holds (worktree_id TEXT PRIMARY KEY, since REAL NOT NULL);
    -- The radar's metric counts its own few events of the window: a partial index holds only them.
    CREATE INDEX events_radar_ts ON events (ts) WHERE action = 'radar';
    CREATE TABLE metric_busy (
        start_bucket INTEGER NOT NULL,
        end_bucket INTEGER NOT NULL,
        n INTEGER NOT NULL,
        start_offsets REAL NOT NULL,
        end_offsets REAL NOT NULL,
        PRIMARY KEY (start_bucket, end_bucket)
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('events_keep_s', {DEFAULT_KEEP_S}), ('metric_late_events', 0);

    INSERT INTO metric_buckets
        SELECT {_bucket("ts")}, MIN(ts), COUNT(*), SUM({_ATTEMPT.format(e="events")}),
            SUM({_SUCCESS.format(e="events")}), SUM({_BRANCH_CONFLICT.format(e="events")}),
            SUM(action = 'cas_lost'), SUM(action = 'agent_dead'), SUM(action = 'agent_stale')
        FROM events GROUP BY 1;
    INSERT INTO metric_latency
        SELECT {_bucket("ts")}, {_bin("duration_ms")}, COUNT(*), MAX(duration_ms)
        FROM events WHERE {_TIMED.format(e="events")} GROUP BY 1, 2;
    -- A hold lasts from its grant to the next grant, release or reclaim of the same worktree.
    CREATE TEMP TABLE rollup_marks AS
        SELECT ts, worktree_id, {_OPENS.format(e="events")} AS opens,
            LEAD(ts) OVER (PARTITION BY worktree_id ORDER BY ts, id) AS next_ts
        FROM events WHERE worktree_id IS NOT NULL AND ({_OPENS.format(e="events")} OR {_CLOSES.format(e="events")});
    INSERT INTO metric_busy
        SELECT {_bucket("ts")}, {_bucket("MAX(next_ts, ts)")}, COUNT(*), SUM({_offset("ts")}),
            SUM({_offset("MAX(next_ts, ts)")})
        FROM rollup_marks WHERE opens AND next_ts IS NOT NULL GROUP BY 1, 2;
    INSERT INTO metric_holds SELECT worktree_id, ts FROM rollup_marks WHERE opens AND next_ts IS NULL;
    DROP TABLE rollup_marks;

    CREATE TRIGGER events_rollup AFTER INSERT ON events BEGIN
        -- Readers cache the buckets before the previous hour; an event stamped into one tells them.
        UPDATE meta SET value = value + 1 WHERE key = 'metric_late_events'
            AND {_bucket("NEW.ts")} < {_bucket(_NOW)} - 1;
        INSERT INTO metric_buckets VALUES ({_bucket("NEW.ts")}, NEW.ts, 1, {_ATTEMPT.format(e="NEW")},
            {_SUCCESS.format(e="NEW")}, {_BRANCH_CONFLICT.format(e="NEW")}, NEW.action = 'cas_lost',
            NEW.action = 'agent_dead', NEW.action = 'agent_stale')
        ON CONFLICT (bucket) DO UPDATE SET first_ts = MIN(first_ts, excluded.first_ts),
            event_count = event_count + 1, attempts = attempts + excluded.attempts,
            successes = successes + excluded.successes,
            branch_conflicts = branch_conflicts + excluded.branch_conflicts,
            cas_lost = cas_lost + excluded.cas_lost, agent_dead = agent_dead + excluded.agent_dead,
            agent_stale = agent_stale + excluded.agent_stale;
        INSERT INTO metric_latency
            SELECT {_bucket("NEW.ts")}, {_bin("NEW.duration_ms")}, 1, NEW.duration_ms WHERE {_TIMED.format(e="NEW")}
        ON CONFLICT (bucket, bin) DO UPDATE SET n = n + 1, max_ms = MAX(max_ms, excluded.max_ms);
        INSERT INTO metric_busy
            SELECT {_bucket("since")}, {_bucket("MAX(NEW.ts, since)")}, 1, {_offset("since")},
                {_offset("MAX(NEW.ts, since)")}
            FROM metric_holds WHERE worktree_id = NEW.worktree_id
                AND ({_OPENS.format(e="NEW")} OR {_CLOSES.format(e="NEW")})
        ON CONFLICT (start_bucket, end_bucket) DO UPDATE SET n = n + 1,
            start_offsets = start_offsets + excluded.start_offsets,
            end_offsets = end_offsets + excluded.end_offsets;
        DELETE FROM metric_holds WHERE worktree_id = NEW.worktree_id
            AND ({_OPENS.format(e="NEW")} OR {_CLOSES.format(e="NEW")});
        INSERT INTO metric_holds SELECT NEW.worktree_id, NEW.ts
            WHERE NEW.worktree_id IS NOT NULL AND {_OPENS.format(e="NEW")};
    END;

    DROP TRIGGER events_no_delete;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        WHEN OLD.ts >= {_NOW} - COALESCE((SELECT value FROM meta WHERE key = 'events_keep_s'), {DEFAULT_KEEP_S})
        BEGIN SELECT RAISE(ABORT, 'events inside the retention period are append-only'); END;
    """,  # noqa: S608
    # 5: alerts, and the lease-renewal gaps of live agents (engine/observe/alerts.py and advise.py).
    # One row per alert raised; at most one active (not cleared) per cause (`key`). Running the alert
    # command is claimed per row and phase by CAS on `notify_raise` / `notify_clear` (NULL: nobody yet;
    # otherwise who ran it, or why nobody will: muted, replaced, expired). The gaps between two renewals
    # of one agent by the same server are rolled up by a trigger on `agents`, per agent and hour, with a
    # histogram per hour: never one row per heartbeat. A server of the previous version renews through
    # the same trigger. Built from this module's constants only.
    f"""
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL CHECK (severity IN ('warning', 'failing')),
        message TEXT NOT NULL,
        agent_id TEXT,
        repo_id INTEGER,
        worktree_id TEXT,
        detail TEXT NOT NULL DEFAULT '{{}}',
        raised_at REAL NOT NULL,
        cleared_at REAL,
        notify_raise TEXT,
        notify_clear TEXT
    );
    CREATE UNIQUE INDEX alerts_active ON alerts (key) WHERE cleared_at IS NULL;
    CREATE INDEX alerts_by_key ON alerts (key, id);
    CREATE INDEX alerts_to_notify ON alerts (id)
        WHERE notify_raise IS NULL OR (cleared_at IS NOT NULL AND notify_clear IS NULL);
    CREATE TABLE lease_gaps (
        bucket INTEGER NOT NULL,
        agent_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        total_s REAL NOT NULL,
        max_s REAL NOT NULL,
        PRIMARY KEY (bucket, agent_id)
    ) WITHOUT ROWID;
    CREATE TABLE lease_gap_bins (
        bucket INTEGER NOT NULL,
        bin REAL NOT NULL,
        n INTEGER NOT NULL,
        max_s REAL NOT NULL,
        PRIMARY KEY (bucket, bin)
    ) WITHOUT ROWID;
    CREATE TRIGGER agents_lease_gap AFTER UPDATE OF last_heartbeat ON agents
        WHEN NEW.last_heartbeat > OLD.last_heartbeat AND NEW.server_pid = OLD.server_pid
            AND NEW.server_create_time = OLD.server_create_time
    BEGIN
        INSERT INTO lease_gaps VALUES ({_bucket("NEW.last_heartbeat")}, NEW.id, 1,
            NEW.last_heartbeat - OLD.last_heartbeat, NEW.last_heartbeat - OLD.last_heartbeat)
        ON CONFLICT (bucket, agent_id) DO UPDATE SET n = n + 1, total_s = total_s + excluded.total_s,
            max_s = MAX(max_s, excluded.max_s);
        INSERT INTO lease_gap_bins VALUES ({_bucket("NEW.last_heartbeat")},
            {_bin("(NEW.last_heartbeat - OLD.last_heartbeat)")}, 1, NEW.last_heartbeat - OLD.last_heartbeat)
        ON CONFLICT (bucket, bin) DO UPDATE SET n = n + 1, max_s = MAX(max_s, excluded.max_s);
    END;
    """,  # noqa: S608
    # 6: where each agent's id comes from (liveness.judge.Origin): `explicit` (AGENT_COORD_AGENT_ID or a
    # caller's), `session` (derived from a Claude Code session by the hooks), `process` (generated from
    # the agent process). Sameness is decided from id, origin and process (judge.same_agent), never
    # from what an id looks like. A table beside `agents`, as `agent_starts` is, naming the agent
    # process it was recorded with: an older server re-registering the id leaves it describing another
    # process, and the origin then counts as unknown.
    """
    CREATE TABLE agent_origins (
        agent_id TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
        origin TEXT NOT NULL CHECK (origin IN ('explicit', 'session', 'process')),
        pid INTEGER NOT NULL,
        pid_create_time REAL NOT NULL
    );
    """,
    # 7: several hosts, one pool of branches (docs/hosts.md). A repository row is one clone on one
    # host (`host`: its AGENT_COORD_HOST_ID) and names its *project* (the key every clone of the
    # repository shares: root commit + normalised origin URL, or AGENT_COORD_PROJECT); a slot carries
    # both, copied from its repository by a trigger (so a server of the previous version inserting a
    # slot fills them too), and the database refuses two live allocations of one branch in one
    # project, whichever host holds it. Rows of earlier versions keep NULLs until the first server of
    # their host resolves the repository (repos.RepoResolver); NULLs are distinct in a unique index, so
    # those stay covered by `slots_branch_held` alone. Columns, not a table beside: every reader of
    # `repos` and `slots` builds its record by column name (rows._slot, slots.repos), never from `*`.
    # SQLite keeps `path UNIQUE` on both tables: a SQLite file serves one host.
    """
    ALTER TABLE repos ADD COLUMN host TEXT;
    ALTER TABLE repos ADD COLUMN project TEXT;
    ALTER TABLE slots ADD COLUMN host TEXT;
    ALTER TABLE slots ADD COLUMN project TEXT;
    CREATE UNIQUE INDEX slots_project_branch_held ON slots (project, branch)
        WHERE state IN ('ALLOCATING', 'BUSY', 'RELEASING');
    CREATE INDEX repos_project ON repos (project);
    CREATE TRIGGER slots_host_project AFTER INSERT ON slots
        WHEN NEW.host IS NULL OR NEW.project IS NULL
    BEGIN
        UPDATE slots SET host = (SELECT host FROM repos WHERE id = NEW.repo_id),
            project = (SELECT project FROM repos WHERE id = NEW.repo_id)
        WHERE id = NEW.id;
    END;
    """,
    # 8: nothing on SQLite; on PostgreSQL, the hot compare-and-swaps as server-side functions
    # (schema_pg.py's migration 8).
    "",
    # 9: the process doing each transition in flight (ALLOCATING, RELEASING): an agent has many
    # processes (a Claude Code session's hooks, its server, the hook host), so the agent row's server
    # says nothing about who works on one slot, and only that one process's death proves the
    # transition can never finish. A trigger marks each transition as the row changes state, owner or
    # token (whoever writes it, an older version too): a fresh row, the slot's version then, the time,
    # no process; the process doing it records itself in its compare-and-swap's own transaction
    # (`Store.transition(worker=...)`, the claims' `worker`). A mark never filled in (an older
    # version's) is judged as before, once old.
    f"""
    CREATE TABLE slot_workers (
        slot_id TEXT PRIMARY KEY REFERENCES slots(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        since REAL NOT NULL,
        host TEXT,
        boot_id TEXT,
        pid INTEGER,
        create_time REAL,
        start_s REAL
    );
    INSERT INTO slot_workers (slot_id, version, state, since)
        SELECT id, version, state, {SQLITE_NOW} FROM slots WHERE state IN ('ALLOCATING', 'RELEASING');
    CREATE TRIGGER slots_worker_insert AFTER INSERT ON slots
    BEGIN
        {_MARK_TRANSITION}
    END;
    CREATE TRIGGER slots_worker_update AFTER UPDATE OF state, owner, fencing_token ON slots
        WHEN NEW.state IS NOT OLD.state OR NEW.owner IS NOT OLD.owner
            OR NEW.fencing_token IS NOT OLD.fencing_token
    BEGIN
        {_MARK_TRANSITION}
    END;
    """,  # noqa: S608
)

SCHEMA_VERSION = len(MIGRATIONS)
