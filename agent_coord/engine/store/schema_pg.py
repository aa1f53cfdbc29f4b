"""The PostgreSQL schema: migration N here is migration N of schema.py, in PostgreSQL's spelling.

Append a migration to both tuples together (tests/test_store_engines.py checks they stay the same
length and that both engines end with the same tables and columns). The version is kept in
`schema_version`, as SQLite keeps it in `PRAGMA user_version`.

What differs from SQLite, and why:
- Fencing tokens come from one sequence, `fencing_tokens` (strictly increasing; a lost compare-and-swap
  leaves a gap, never a repeat). `meta.fencing_token` is not used here.
- Event ids are taken from `events_id` under the store's writer lock (`events_order`), so ids grow in
  commit order: a reader that has seen id N has seen every event before it (cursors rely on that).
- Triggers are PL/pgSQL functions; the append-only and retention rules raise SQLSTATE 23000, which the
  store reports as the integrity error SQLite's `RAISE(ABORT)` gives.
- Every committed change to the coordination tables is announced on the channel `agent_coord_changes`
  (one statement-level trigger per table), where SQLite readers poll `PRAGMA data_version`.
- Times are `DOUBLE PRECISION` seconds, as SQLite's REAL; `meta.value` too (SQLite's column takes a
  fractional retention period, so this one must).
"""

from __future__ import annotations

from agent_coord.engine.store.schema import BUCKET_S, CALLER_ERROR_CODES, DEFAULT_KEEP_S

CHANGES_CHANNEL = "agent_coord_changes"
# Advisory lock keys (classid, objid): the store's writer lock, and schema migration.
LOCK_CLASS = 1094936148
WRITER_LOCK = f"pg_advisory_xact_lock({LOCK_CLASS}, 1)"
MIGRATION_LOCK = f"pg_advisory_xact_lock({LOCK_CLASS}, 0)"

_ATTEMPT = "({e}.action = 'allocate' AND {e}.outcome NOT IN (" + ", ".join(f"'{c}'" for c in CALLER_ERROR_CODES) + "))"
_SUCCESS = "({e}.action = 'allocate' AND {e}.outcome = 'ok')"
_BRANCH_CONFLICT = "({e}.action = 'allocate' AND {e}.outcome = 'BRANCH_CONFLICT')"
# NaN is stored as NULL by the store (as SQLite does); inf is excluded by the range.
_TIMED = _ATTEMPT + " AND {e}.duration_ms BETWEEN -1e308 AND 1e308"
_OPENS = "(({e}.action = 'allocate' AND {e}.outcome = 'ok') OR ({e}.action = 'adopt' AND {e}.outcome = 'BUSY'))"
_CLOSES = "(({e}.action = 'release' AND {e}.outcome = 'ok') OR {e}.action = 'reclaim')"
_NOW = "extract(epoch FROM clock_timestamp())::float8"


def _bucket(ts: str) -> str:
    # floor, as Python's `//` in events.py (SQLite's CAST truncates; both agree for times after 1970).
    return f"floor(({ts}) / {BUCKET_S})::bigint"


def _offset(ts: str) -> str:
    return f"(({ts}) - {_bucket(ts)} * {BUCKET_S})"


def _bin(ms: str) -> str:
    """schema._bin in float8 arithmetic: trunc() of a double is SQLite's CAST to INTEGER, bit for bit."""
    steps = " ".join(
        f"WHEN {ms} < {10.0 ** (k + 2):g}::float8 THEN trunc({ms} / {10.0**k:g}::float8) * {10.0**k:g}::float8"
        for k in range(-2, 8)
    )
    return f"(CASE WHEN {ms} < 0.1::float8 THEN {ms} {steps} ELSE {ms} END)"


def _notify_on(*tables: str) -> str:
    return "\n".join(
        f"CREATE TRIGGER {t}_announce AFTER INSERT OR UPDATE OR DELETE ON {t}"
        " FOR EACH STATEMENT EXECUTE FUNCTION agent_coord_announce();"
        for t in tables
    )


# The events a function appends, one array per column of `events` (rows._append's values, in order).
_EVENT_PARAMS = (
    "e_agent TEXT[], e_action TEXT[], e_repo BIGINT[], e_worktree TEXT[], e_branch TEXT[], e_outcome TEXT[],"
    " e_duration DOUBLE PRECISION[], e_token BIGINT[], e_detail TEXT[]"
)
_EVENT_ARGS = "e_agent, e_action, e_repo, e_worktree, e_branch, e_outcome, e_duration, e_token, e_detail"
_HELD = "('ALLOCATING', 'BUSY', 'RELEASING')"
# The process doing a transition (records.WorkerProcess), as the claim functions of migration 9 take it.
_WORKER_PARAMS = "w_host TEXT, w_boot TEXT, w_pid BIGINT, w_create_time DOUBLE PRECISION, w_start_s DOUBLE PRECISION"
_WORKER_ARGS = "w_host, w_boot, w_pid, w_create_time, w_start_s"
_CLAIM_ANY_PARAMS = (
    "p_repo_id BIGINT, p_paths TEXT[], p_warmest BOOLEAN, p_owner TEXT, p_branch TEXT, p_task TEXT,"
    " p_now DOUBLE PRECISION, p_lease_expires_at DOUBLE PRECISION"
)
_CLAIM_ANY_ARGS = "p_repo_id, p_paths, p_warmest, p_owner, p_branch, p_task, p_now, p_lease_expires_at"
_CLAIM_NEW_PARAMS = (
    "p_repo_id BIGINT, p_path_prefix TEXT, p_pool_max BIGINT, p_owner TEXT, p_branch TEXT, p_task TEXT,"
    f" p_now DOUBLE PRECISION, p_lease_expires_at DOUBLE PRECISION, {_EVENT_PARAMS}"
)
_CLAIM_NEW_ARGS = (
    f"p_repo_id, p_path_prefix, p_pool_max, p_owner, p_branch, p_task, p_now, p_lease_expires_at, {_EVENT_ARGS}"
)


_TRANSITION_PARAMS = (
    "p_id TEXT, p_states TEXT[], p_token BIGINT, p_version BIGINT, p_delete BOOLEAN, p_set TEXT[], p_state TEXT,"
    " p_owner TEXT, p_branch TEXT, p_fencing_token BIGINT, p_lease_expires_at DOUBLE PRECISION,"
    " p_since DOUBLE PRECISION, p_released_at DOUBLE PRECISION, p_task TEXT, p_rescue_ref TEXT,"
    f" p_setup_done INTEGER, p_now DOUBLE PRECISION, {_EVENT_PARAMS}"
)
_TRANSITION_ARGS = (
    "p_id, p_states, p_token, p_version, p_delete, p_set, p_state, p_owner, p_branch, p_fencing_token,"
    f" p_lease_expires_at, p_since, p_released_at, p_task, p_rescue_ref, p_setup_done, p_now, {_EVENT_ARGS}"
)
# The row of a claim's or transition's answer that begins a transition in flight.
_CLAIMED = "o_tag = 'claimed'"
_INTO_FLIGHT = "o_tag = 'after' AND (o_slot).state IN ('ALLOCATING', 'RELEASING')"


def _recording(fn: str, params: str, args: str, begins: str) -> str:
    """`fn` (a claim or transition function of migration 8) with the process doing the transition it
    begins (the answer's row where `begins`) as more parameters, recorded in the same transaction
    (migration 9); the original stays for servers of the previous version."""
    return f"""
    CREATE FUNCTION {fn}({params}, {_WORKER_PARAMS})
    RETURNS TABLE (o_tag TEXT, o_slot slots) LANGUAGE plpgsql AS $$
    DECLARE
        v_row RECORD;
    BEGIN
        FOR v_row IN SELECT * FROM {fn}({args}) LOOP
            o_tag := v_row.o_tag;
            o_slot := v_row.o_slot;
            IF {begins} THEN
                PERFORM agent_coord_record_worker(o_slot, p_now, {_WORKER_ARGS});
            END IF;
            RETURN NEXT;
        END LOOP;
    END $$;
    """  # noqa: S608 (names and parameter lists of this module, no value)


def _int(condition: str) -> str:
    return f"({condition})::int"


# Built from this module's constants only.
PG_MIGRATIONS: tuple[str, ...] = (
    # 1: the coordination core
    f"""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL);
    INSERT INTO meta (key, value) VALUES ('fencing_token', 0), ('slot_seq', 0);
    CREATE SEQUENCE fencing_tokens AS BIGINT START 1;

    CREATE TABLE repos (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        pool_root TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );

    CREATE TABLE slots (
        id TEXT PRIMARY KEY,
        repo_id BIGINT NOT NULL REFERENCES repos(id),
        path TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL
            CHECK (state IN ('FREE', 'ALLOCATING', 'BUSY', 'RELEASING', 'QUARANTINED')),
        version BIGINT NOT NULL DEFAULT 0,
        owner TEXT,
        branch TEXT,
        fencing_token BIGINT,
        lease_expires_at DOUBLE PRECISION,
        since DOUBLE PRECISION,
        released_at DOUBLE PRECISION,
        task TEXT,
        rescue_ref TEXT,
        setup_done INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL
    );
    -- One live allocation per branch and repository, enforced by the database itself.
    CREATE UNIQUE INDEX slots_branch_held ON slots (repo_id, branch)
        WHERE state IN ('ALLOCATING', 'BUSY', 'RELEASING');
    CREATE INDEX slots_owner ON slots (owner);

    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        boot_id TEXT NOT NULL,
        pid BIGINT NOT NULL,
        pid_create_time DOUBLE PRECISION NOT NULL,
        server_pid BIGINT NOT NULL,
        server_create_time DOUBLE PRECISION NOT NULL,
        repo_id BIGINT,
        status TEXT NOT NULL DEFAULT 'active',
        note TEXT,
        started_at DOUBLE PRECISION NOT NULL,
        last_heartbeat DOUBLE PRECISION NOT NULL,
        lease_expires_at DOUBLE PRECISION NOT NULL
    );

    CREATE SEQUENCE events_id AS BIGINT START 1;
    CREATE TABLE events (
        id BIGINT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        agent_id TEXT,
        action TEXT NOT NULL,
        repo_id BIGINT,
        worktree_id TEXT,
        branch TEXT,
        outcome TEXT NOT NULL,
        duration_ms DOUBLE PRECISION,
        fencing_token BIGINT,
        detail TEXT NOT NULL DEFAULT '{{}}'
    );
    CREATE INDEX events_ts ON events (ts);
    CREATE INDEX events_worktree ON events (worktree_id, id);
    CREATE INDEX events_branch ON events (branch, id);

    -- Ids in commit order: taken under the writer lock, which is held until the commit.
    CREATE FUNCTION events_order() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM {WRITER_LOCK};
        IF NEW.id IS NULL THEN
            NEW.id := nextval('events_id');
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER events_order BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION events_order();

    -- Append-only: the log is evidence, so the database refuses edits and deletes.
    CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'events are append-only' USING ERRCODE = 'integrity_constraint_violation';
    END $$;
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION events_append_only();
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events FOR EACH ROW EXECUTE FUNCTION events_append_only();
    CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        version BIGINT NOT NULL DEFAULT 0
    );

    CREATE FUNCTION agent_coord_announce() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANGES_CHANNEL}', '');
        RETURN NULL;
    END $$;
    {_notify_on("meta", "repos", "slots", "agents", "events", "leases")}
    """,  # noqa: S608
    # 2: process start times counted from boot (see schema.py)
    f"""
    CREATE TABLE agent_starts (
        agent_id TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
        pid BIGINT NOT NULL,
        pid_create_time DOUBLE PRECISION NOT NULL,
        pid_start_s DOUBLE PRECISION,
        server_pid BIGINT NOT NULL,
        server_create_time DOUBLE PRECISION NOT NULL,
        server_start_s DOUBLE PRECISION
    );
    {_notify_on("agent_starts")}
    """,
    # 3: the conflict radar (see schema.py)
    f"""
    CREATE TABLE radar_trees (
        worktree_id TEXT PRIMARY KEY,
        fencing_token BIGINT NOT NULL,
        repo_id BIGINT NOT NULL,
        head TEXT NOT NULL,
        tree TEXT NOT NULL,
        base_ref TEXT,
        base_commit TEXT,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE radar_changes (
        worktree_id TEXT NOT NULL,
        repo_id BIGINT NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (worktree_id, path)
    );
    CREATE INDEX radar_changes_path ON radar_changes (repo_id, path);
    CREATE TABLE radar_pairs (
        a TEXT NOT NULL,
        b TEXT NOT NULL,
        repo_id BIGINT NOT NULL,
        a_token BIGINT NOT NULL,
        b_token BIGINT,
        a_state TEXT NOT NULL,
        b_state TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('none', 'overlap', 'conflict')),
        detail TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (a, b)
    );
    {_notify_on("radar_trees", "radar_pairs")}
    """,
    # 4: metric rollups written by a trigger in the event's own transaction, and retention (see schema.py)
    f"""
    CREATE TABLE metric_buckets (
        bucket BIGINT PRIMARY KEY,
        first_ts DOUBLE PRECISION NOT NULL,
        event_count BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        successes BIGINT NOT NULL,
        branch_conflicts BIGINT NOT NULL,
        cas_lost BIGINT NOT NULL,
        agent_dead BIGINT NOT NULL,
        agent_stale BIGINT NOT NULL
    );
    CREATE TABLE metric_latency (
        bucket BIGINT NOT NULL,
        bin DOUBLE PRECISION NOT NULL,
        n BIGINT NOT NULL,
        max_ms DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (bucket, bin)
    );
    CREATE TABLE metric_holds (worktree_id TEXT PRIMARY KEY, since DOUBLE PRECISION NOT NULL);
    CREATE INDEX events_radar_ts ON events (ts) WHERE action = 'radar';
    CREATE TABLE metric_busy (
        start_bucket BIGINT NOT NULL,
        end_bucket BIGINT NOT NULL,
        n BIGINT NOT NULL,
        start_offsets DOUBLE PRECISION NOT NULL,
        end_offsets DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (start_bucket, end_bucket)
    );
    INSERT INTO meta (key, value) VALUES ('events_keep_s', {DEFAULT_KEEP_S}), ('metric_late_events', 0);

    INSERT INTO metric_buckets
        SELECT {_bucket("ts")}, MIN(ts), COUNT(*), SUM({_int(_ATTEMPT.format(e="events"))}),
            SUM({_int(_SUCCESS.format(e="events"))}), SUM({_int(_BRANCH_CONFLICT.format(e="events"))}),
            SUM((action = 'cas_lost')::int), SUM((action = 'agent_dead')::int), SUM((action = 'agent_stale')::int)
        FROM events GROUP BY 1;
    INSERT INTO metric_latency
        SELECT {_bucket("ts")}, {_bin("duration_ms")}, COUNT(*), MAX(duration_ms)
        FROM events WHERE {_TIMED.format(e="events")} GROUP BY 1, 2;
    CREATE TEMP TABLE rollup_marks ON COMMIT DROP AS
        SELECT ts, worktree_id, {_OPENS.format(e="events")} AS opens,
            LEAD(ts) OVER (PARTITION BY worktree_id ORDER BY ts, id) AS next_ts
        FROM events WHERE worktree_id IS NOT NULL AND ({_OPENS.format(e="events")} OR {_CLOSES.format(e="events")});
    INSERT INTO metric_busy
        SELECT {_bucket("ts")}, {_bucket("GREATEST(next_ts, ts)")}, COUNT(*), SUM({_offset("ts")}),
            SUM({_offset("GREATEST(next_ts, ts)")})
        FROM rollup_marks WHERE opens AND next_ts IS NOT NULL GROUP BY 1, 2;
    INSERT INTO metric_holds SELECT worktree_id, ts FROM rollup_marks WHERE opens AND next_ts IS NULL;

    CREATE FUNCTION events_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'metric_late_events'
            AND {_bucket("NEW.ts")} < {_bucket(_NOW)} - 1;
        INSERT INTO metric_buckets AS m VALUES ({_bucket("NEW.ts")}, NEW.ts, 1, {_int(_ATTEMPT.format(e="NEW"))},
            {_int(_SUCCESS.format(e="NEW"))}, {_int(_BRANCH_CONFLICT.format(e="NEW"))},
            (NEW.action = 'cas_lost')::int, (NEW.action = 'agent_dead')::int, (NEW.action = 'agent_stale')::int)
        ON CONFLICT (bucket) DO UPDATE SET first_ts = LEAST(m.first_ts, excluded.first_ts),
            event_count = m.event_count + 1, attempts = m.attempts + excluded.attempts,
            successes = m.successes + excluded.successes,
            branch_conflicts = m.branch_conflicts + excluded.branch_conflicts,
            cas_lost = m.cas_lost + excluded.cas_lost, agent_dead = m.agent_dead + excluded.agent_dead,
            agent_stale = m.agent_stale + excluded.agent_stale;
        IF {_TIMED.format(e="NEW")} THEN
            INSERT INTO metric_latency AS l VALUES ({_bucket("NEW.ts")}, {_bin("NEW.duration_ms")}, 1, NEW.duration_ms)
            ON CONFLICT (bucket, bin) DO UPDATE SET n = l.n + 1, max_ms = GREATEST(l.max_ms, excluded.max_ms);
        END IF;
        IF NEW.worktree_id IS NOT NULL AND ({_OPENS.format(e="NEW")} OR {_CLOSES.format(e="NEW")}) THEN
            INSERT INTO metric_busy AS b
                SELECT {_bucket("since")}, {_bucket("GREATEST(NEW.ts, since)")}, 1, {_offset("since")},
                    {_offset("GREATEST(NEW.ts, since)")}
                FROM metric_holds WHERE worktree_id = NEW.worktree_id
            ON CONFLICT (start_bucket, end_bucket) DO UPDATE SET n = b.n + 1,
                start_offsets = b.start_offsets + excluded.start_offsets,
                end_offsets = b.end_offsets + excluded.end_offsets;
            DELETE FROM metric_holds WHERE worktree_id = NEW.worktree_id;
            IF {_OPENS.format(e="NEW")} THEN
                INSERT INTO metric_holds VALUES (NEW.worktree_id, NEW.ts);
            END IF;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_rollup AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION events_rollup();

    DROP TRIGGER events_no_delete ON events;
    CREATE FUNCTION events_keep() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.ts >= {_NOW} - COALESCE((SELECT value FROM meta WHERE key = 'events_keep_s'), {DEFAULT_KEEP_S}) THEN
            RAISE EXCEPTION 'events inside the retention period are append-only'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN OLD;
    END $$;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events FOR EACH ROW EXECUTE FUNCTION events_keep();
    """,  # noqa: S608
    # 5: alerts, and the lease-renewal gaps of live agents (see schema.py)
    f"""
    CREATE TABLE alerts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL CHECK (severity IN ('warning', 'failing')),
        message TEXT NOT NULL,
        agent_id TEXT,
        repo_id BIGINT,
        worktree_id TEXT,
        detail TEXT NOT NULL DEFAULT '{{}}',
        raised_at DOUBLE PRECISION NOT NULL,
        cleared_at DOUBLE PRECISION,
        notify_raise TEXT,
        notify_clear TEXT
    );
    CREATE UNIQUE INDEX alerts_active ON alerts (key) WHERE cleared_at IS NULL;
    CREATE INDEX alerts_by_key ON alerts (key, id);
    CREATE INDEX alerts_to_notify ON alerts (id)
        WHERE notify_raise IS NULL OR (cleared_at IS NOT NULL AND notify_clear IS NULL);
    CREATE TABLE lease_gaps (
        bucket BIGINT NOT NULL,
        agent_id TEXT NOT NULL,
        n BIGINT NOT NULL,
        total_s DOUBLE PRECISION NOT NULL,
        max_s DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (bucket, agent_id)
    );
    CREATE TABLE lease_gap_bins (
        bucket BIGINT NOT NULL,
        bin DOUBLE PRECISION NOT NULL,
        n BIGINT NOT NULL,
        max_s DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (bucket, bin)
    );
    CREATE FUNCTION agents_lease_gap() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO lease_gaps AS g VALUES ({_bucket("NEW.last_heartbeat")}, NEW.id, 1,
            NEW.last_heartbeat - OLD.last_heartbeat, NEW.last_heartbeat - OLD.last_heartbeat)
        ON CONFLICT (bucket, agent_id) DO UPDATE SET n = g.n + 1, total_s = g.total_s + excluded.total_s,
            max_s = GREATEST(g.max_s, excluded.max_s);
        INSERT INTO lease_gap_bins AS b VALUES ({_bucket("NEW.last_heartbeat")},
            {_bin("(NEW.last_heartbeat - OLD.last_heartbeat)")}, 1, NEW.last_heartbeat - OLD.last_heartbeat)
        ON CONFLICT (bucket, bin) DO UPDATE SET n = b.n + 1, max_s = GREATEST(b.max_s, excluded.max_s);
        RETURN NULL;
    END $$;
    CREATE TRIGGER agents_lease_gap AFTER UPDATE OF last_heartbeat ON agents FOR EACH ROW
        WHEN (NEW.last_heartbeat > OLD.last_heartbeat AND NEW.server_pid = OLD.server_pid
            AND NEW.server_create_time = OLD.server_create_time)
        EXECUTE FUNCTION agents_lease_gap();
    {_notify_on("alerts")}
    """,  # noqa: S608
    # 6: where each agent's id came from (schema.py's migration 6).
    f"""
    CREATE TABLE agent_origins (
        agent_id TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
        origin TEXT NOT NULL CHECK (origin IN ('explicit', 'session', 'process')),
        pid BIGINT NOT NULL,
        pid_create_time DOUBLE PRECISION NOT NULL
    );
    {_notify_on("agent_origins")}
    """,
    # 7: several hosts, one pool of branches (schema.py's migration 7). Here a path is unique per host
    # only: two hosts may well keep their clones and pools at the same path.
    """
    ALTER TABLE repos ADD COLUMN host TEXT;
    ALTER TABLE repos ADD COLUMN project TEXT;
    ALTER TABLE slots ADD COLUMN host TEXT;
    ALTER TABLE slots ADD COLUMN project TEXT;
    ALTER TABLE repos DROP CONSTRAINT repos_path_key;
    ALTER TABLE repos ADD CONSTRAINT repos_host_path_key UNIQUE (host, path);
    ALTER TABLE slots DROP CONSTRAINT slots_path_key;
    ALTER TABLE slots ADD CONSTRAINT slots_host_path_key UNIQUE (host, path);
    CREATE UNIQUE INDEX slots_project_branch_held ON slots (project, branch)
        WHERE state IN ('ALLOCATING', 'BUSY', 'RELEASING');
    CREATE INDEX repos_project ON repos (project);
    CREATE FUNCTION slots_host_project() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.host IS NULL OR NEW.project IS NULL THEN
            SELECT host, project INTO NEW.host, NEW.project FROM repos WHERE id = NEW.repo_id;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER slots_host_project BEFORE INSERT ON slots FOR EACH ROW EXECUTE FUNCTION slots_host_project();
    """,
    # 8: the hot compare-and-swaps (slots.py's claim_any_free_slot, claim_new_slot, transition) as
    # functions, so a write is one round trip and the writer lock is held only inside the server. Each is
    # the Python transaction function statement for statement; the engine-parametrised tests keep the
    # two equal. Rows come back tagged: 'held' (the holder of the branch), 'claimed', 'before', 'after'.
    f"""
    CREATE FUNCTION agent_coord_append_events(p_now DOUBLE PRECISION, p_worktree TEXT, p_token BIGINT,
        p_override BOOLEAN, {_EVENT_PARAMS}) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        FOR i IN 1 .. COALESCE(array_length(e_action, 1), 0) LOOP
            INSERT INTO events (ts, agent_id, action, repo_id, worktree_id, branch, outcome, duration_ms,
                fencing_token, detail)
            VALUES (p_now, e_agent[i], e_action[i], e_repo[i],
                CASE WHEN p_override THEN p_worktree ELSE COALESCE(e_worktree[i], p_worktree) END,
                e_branch[i], e_outcome[i], e_duration[i],
                CASE WHEN p_override THEN p_token ELSE COALESCE(e_token[i], p_token) END, e_detail[i]);
        END LOOP;
    END $$;

    CREATE FUNCTION agent_coord_branch_holder(p_repo_id BIGINT, p_branch TEXT) RETURNS slots
    LANGUAGE sql STABLE AS $$
        SELECT * FROM slots WHERE branch = p_branch AND state IN {_HELD}
            AND (repo_id = p_repo_id OR project = (SELECT project FROM repos WHERE id = p_repo_id))
            ORDER BY repo_id != p_repo_id LIMIT 1
    $$;

    CREATE FUNCTION agent_coord_claim_any(p_repo_id BIGINT, p_paths TEXT[], p_warmest BOOLEAN, p_owner TEXT,
        p_branch TEXT, p_task TEXT, p_now DOUBLE PRECISION, p_lease_expires_at DOUBLE PRECISION)
    RETURNS TABLE (o_tag TEXT, o_slot slots) LANGUAGE plpgsql AS $$
    DECLARE
        v_id TEXT;
    BEGIN
        PERFORM {WRITER_LOCK};
        o_slot := agent_coord_branch_holder(p_repo_id, p_branch);
        IF o_slot.id IS NOT NULL THEN
            o_tag := 'held';
            RETURN NEXT;
            RETURN;
        END IF;
        IF p_warmest THEN
            SELECT id INTO v_id FROM slots WHERE repo_id = p_repo_id AND state = 'FREE' AND path = ANY(p_paths)
                ORDER BY COALESCE(released_at, 0) DESC, id LIMIT 1;
        ELSE
            SELECT id INTO v_id FROM slots WHERE repo_id = p_repo_id AND state = 'FREE' AND path = ANY(p_paths)
                ORDER BY COALESCE(released_at, 0) ASC, id LIMIT 1;
        END IF;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = p_owner, branch = p_branch,
            fencing_token = nextval('fencing_tokens'), lease_expires_at = p_lease_expires_at, since = p_now,
            task = p_task, rescue_ref = NULL
            WHERE id = v_id AND state = 'FREE';
        o_tag := 'claimed';
        SELECT * INTO o_slot FROM slots WHERE id = v_id;
        RETURN NEXT;
    END $$;

    CREATE FUNCTION agent_coord_claim_new(p_repo_id BIGINT, p_path_prefix TEXT, p_pool_max BIGINT, p_owner TEXT,
        p_branch TEXT, p_task TEXT, p_now DOUBLE PRECISION, p_lease_expires_at DOUBLE PRECISION,
        {_EVENT_PARAMS})
    RETURNS TABLE (o_tag TEXT, o_slot slots) LANGUAGE plpgsql AS $$
    DECLARE
        v_seq DOUBLE PRECISION;
        v_n BIGINT;
        v_id TEXT;
        v_path TEXT;
        v_token BIGINT;
    BEGIN
        PERFORM {WRITER_LOCK};
        o_slot := agent_coord_branch_holder(p_repo_id, p_branch);
        IF o_slot.id IS NOT NULL THEN
            o_tag := 'held';
            RETURN NEXT;
            RETURN;
        END IF;
        IF (SELECT COUNT(*) FROM slots WHERE repo_id = p_repo_id AND state != 'QUARANTINED') >= p_pool_max THEN
            RETURN;
        END IF;
        LOOP  -- rows._next_slot_id: the next wt-NN whose id and default path are both unused
            UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value INTO STRICT v_seq;
            v_n := trunc(v_seq)::BIGINT;
            v_id := 'wt-' || CASE WHEN v_n BETWEEN 0 AND 9 THEN '0' || v_n::TEXT ELSE v_n::TEXT END;
            v_path := p_path_prefix || v_id;
            EXIT WHEN NOT EXISTS (SELECT 1 FROM slots WHERE id = v_id OR path = v_path);
        END LOOP;
        v_token := nextval('fencing_tokens');
        INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token, lease_expires_at,
            since, task, created_at)
            VALUES (v_id, p_repo_id, v_path, 'ALLOCATING', 0, p_owner, p_branch, v_token, p_lease_expires_at,
                p_now, p_task, p_now);
        PERFORM agent_coord_append_events(p_now, v_id, v_token, true, {_EVENT_ARGS});
        o_tag := 'claimed';
        SELECT * INTO o_slot FROM slots WHERE id = v_id;
        RETURN NEXT;
    END $$;

    -- p_set names the columns to change; the other p_ values of the row are ignored.
    CREATE FUNCTION agent_coord_transition(p_id TEXT, p_states TEXT[], p_token BIGINT, p_version BIGINT,
        p_delete BOOLEAN, p_set TEXT[], p_state TEXT, p_owner TEXT, p_branch TEXT, p_fencing_token BIGINT,
        p_lease_expires_at DOUBLE PRECISION, p_since DOUBLE PRECISION, p_released_at DOUBLE PRECISION,
        p_task TEXT, p_rescue_ref TEXT, p_setup_done INTEGER, p_now DOUBLE PRECISION, {_EVENT_PARAMS})
    RETURNS TABLE (o_tag TEXT, o_slot slots) LANGUAGE plpgsql AS $$
    DECLARE
        v_before slots;
    BEGIN
        PERFORM {WRITER_LOCK};
        SELECT * INTO v_before FROM slots WHERE id = p_id AND state = ANY(p_states)
            AND (p_token IS NULL OR fencing_token = p_token) AND (p_version IS NULL OR version = p_version);
        IF NOT FOUND THEN
            RETURN;
        END IF;
        o_tag := 'before';
        o_slot := v_before;
        RETURN NEXT;
        IF p_delete THEN
            DELETE FROM slots WHERE id = p_id;
        ELSE
            UPDATE slots SET
                state = CASE WHEN 'state' = ANY(p_set) THEN p_state ELSE state END,
                owner = CASE WHEN 'owner' = ANY(p_set) THEN p_owner ELSE owner END,
                branch = CASE WHEN 'branch' = ANY(p_set) THEN p_branch ELSE branch END,
                fencing_token = CASE WHEN 'fencing_token' = ANY(p_set) THEN p_fencing_token ELSE fencing_token END,
                lease_expires_at = CASE WHEN 'lease_expires_at' = ANY(p_set) THEN p_lease_expires_at
                    ELSE lease_expires_at END,
                since = CASE WHEN 'since' = ANY(p_set) THEN p_since ELSE since END,
                released_at = CASE WHEN 'released_at' = ANY(p_set) THEN p_released_at ELSE released_at END,
                task = CASE WHEN 'task' = ANY(p_set) THEN p_task ELSE task END,
                rescue_ref = CASE WHEN 'rescue_ref' = ANY(p_set) THEN p_rescue_ref ELSE rescue_ref END,
                setup_done = CASE WHEN 'setup_done' = ANY(p_set) THEN p_setup_done ELSE setup_done END,
                version = version + 1
                WHERE id = p_id;
            o_tag := 'after';
            SELECT * INTO o_slot FROM slots WHERE id = p_id;
            RETURN NEXT;
        END IF;
        PERFORM agent_coord_append_events(p_now, p_id, v_before.fencing_token, false, {_EVENT_ARGS});
    END $$;
    """,  # noqa: S608
    # 9: the process doing each transition in flight (see schema.py)
    f"""
    CREATE TABLE slot_workers (
        slot_id TEXT PRIMARY KEY REFERENCES slots(id) ON DELETE CASCADE,
        version BIGINT NOT NULL,
        state TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        host TEXT,
        boot_id TEXT,
        pid BIGINT,
        create_time DOUBLE PRECISION,
        start_s DOUBLE PRECISION
    );
    CREATE FUNCTION agent_coord_mark_transition() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.state IS NOT DISTINCT FROM OLD.state
                AND NEW.owner IS NOT DISTINCT FROM OLD.owner
                AND NEW.fencing_token IS NOT DISTINCT FROM OLD.fencing_token THEN
            RETURN NULL;
        END IF;
        DELETE FROM slot_workers WHERE slot_id = NEW.id;
        IF NEW.state IN ('ALLOCATING', 'RELEASING') THEN
            INSERT INTO slot_workers (slot_id, version, state, since)
                VALUES (NEW.id, NEW.version, NEW.state, {_NOW});
        END IF;
        RETURN NULL;
    END $$;
    INSERT INTO slot_workers (slot_id, version, state, since)
        SELECT id, version, state, {_NOW} FROM slots WHERE state IN ('ALLOCATING', 'RELEASING');
    CREATE TRIGGER slots_mark_transition AFTER INSERT OR UPDATE OF state, owner, fencing_token ON slots
        FOR EACH ROW EXECUTE FUNCTION agent_coord_mark_transition();
    -- The claims with the process doing them recorded in the same transaction (the claim functions of
    -- migration 8 stay for servers of the previous version).
    CREATE FUNCTION agent_coord_record_worker(p_slot slots, p_now DOUBLE PRECISION, {_WORKER_PARAMS})
    RETURNS VOID LANGUAGE sql AS $$
        INSERT INTO slot_workers (slot_id, version, state, since, host, boot_id, pid, create_time, start_s)
            VALUES ((p_slot).id, (p_slot).version, (p_slot).state, p_now, w_host, w_boot, w_pid, w_create_time,
                w_start_s)
            ON CONFLICT (slot_id) DO UPDATE SET version = excluded.version, state = excluded.state,
                host = excluded.host, boot_id = excluded.boot_id, pid = excluded.pid,
                create_time = excluded.create_time, start_s = excluded.start_s
    $$;
    {_recording("agent_coord_claim_any", _CLAIM_ANY_PARAMS, _CLAIM_ANY_ARGS, _CLAIMED)}
    {_recording("agent_coord_claim_new", _CLAIM_NEW_PARAMS, _CLAIM_NEW_ARGS, _CLAIMED)}
    {_recording("agent_coord_transition", _TRANSITION_PARAMS, _TRANSITION_ARGS, _INTO_FLIGHT)}
    """,  # noqa: S608
)
