"""The store's schema, as the migrations that build it, and the routine that runs them.

Version N of the schema is ``MIGRATIONS[:N]`` run in order; ``PRAGMA
user_version`` says how many have run, so ``migrate`` runs only the missing
ones, each in its own transaction. A migration is history: once released it is
never edited, since stores that ran it must keep matching stores that run it
now. A change of schema is a new entry at the end (docs/DECISIONS.md,
"Adding a job field").
"""

from __future__ import annotations

import logging

import apsw

from queuectl.proto.states import ALL_STATES, Outcome

from .intake import EXIT_CODES, MAX_PID
from .rows import literal

log = logging.getLogger(__name__)

# (GLOB pattern of a stored reason, the outcome that wrote it): schema version 9.
_OUTCOMES_OF_REASONS = (
    ("exit code *", Outcome.EXIT),
    ("killed by signal *", Outcome.SIGNAL),
    ("killed by a signal", Outcome.SIGNAL),
    ("timeout", Outcome.TIMEOUT),
    ("canceled", Outcome.CANCELED),
    ("could not start: *", Outcome.SPAWN_ERROR),
    ("agent lost", Outcome.LEASE_LOST),
    ("agent stopped before the job finished", Outcome.STOPPED),
)

# Epoch seconds the views can show (year 1970 to 9999).
LATEST_TIME = 253402300799
EXIT_LOW, EXIT_HIGH = EXIT_CODES.start, EXIT_CODES.stop - 1


def _sane(column: str) -> str:
    """SQL: ``column`` is unset or a time the views can show."""
    return f"coalesce({column} BETWEEN 0 AND {LATEST_TIME}, 1)"


MIGRATIONS = [
    # version 1
    f"""
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        command TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in ALL_STATES)})),
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        run_at REAL NOT NULL,
        due INTEGER NOT NULL DEFAULT 0,
        timeout_sec REAL NOT NULL,
        max_retries INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        env TEXT,
        cwd TEXT,
        requires TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        exit_code INTEGER,
        last_error TEXT,
        lease INTEGER,
        agent TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    -- claim-next: lowest priority value, then oldest run_at, then insertion order.
    -- Jobs that require labels have their own index, so a backlog that no
    -- agent can take never slows down claiming the others.
    CREATE INDEX jobs_claim ON jobs(priority, run_at, seq) WHERE due = 1 AND requires IS NULL;
    CREATE INDEX jobs_claim_placed ON jobs(priority, run_at, seq)
        WHERE due = 1 AND requires IS NOT NULL;
    -- the timer: the earliest run_at among jobs that are waiting for it
    CREATE INDEX jobs_timer ON jobs(run_at) WHERE due = 0 AND state IN ('pending', 'failed');
    CREATE INDEX jobs_state ON jobs(state, seq);
    CREATE INDEX jobs_queue ON jobs(queue, seq);
    CREATE INDEX jobs_lease ON jobs(lease) WHERE lease IS NOT NULL;

    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        job_seq INTEGER NOT NULL REFERENCES jobs(seq) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        agent TEXT NOT NULL,
        dispatched_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        pid INTEGER,
        exit_code INTEGER,
        reason TEXT,
        stale INTEGER NOT NULL DEFAULT 0,
        stdout_bytes INTEGER NOT NULL DEFAULT 0,   -- stored (after trimming)
        stderr_bytes INTEGER NOT NULL DEFAULT 0,
        stdout_end INTEGER NOT NULL DEFAULT 0,     -- stream offset after the last stored byte
        stderr_end INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX attempts_job ON attempts(job_seq, id);

    CREATE TABLE output (
        attempt_id INTEGER NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
        stream INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (attempt_id, stream, offset)
    );

    CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;

    CREATE TABLE counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counts (state, n) VALUES {", ".join(f"('{s}', 0)" for s in ALL_STATES)};
    CREATE TABLE totals (name TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
    INSERT INTO totals (name, value) VALUES ('completed_n', 0), ('completed_seconds', 0);

    CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
        UPDATE counts SET n = n + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs
    WHEN OLD.state != NEW.state BEGIN
        UPDATE counts SET n = n - 1 WHERE state = OLD.state;
        UPDATE counts SET n = n + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE counts SET n = n - 1 WHERE state = OLD.state;
    END;
    CREATE TRIGGER jobs_completed AFTER UPDATE OF state ON jobs
    WHEN NEW.state = 'completed' AND OLD.state != 'completed'
         AND NEW.started_at IS NOT NULL AND NEW.finished_at IS NOT NULL BEGIN
        UPDATE totals SET value = value + 1 WHERE name = 'completed_n';
        UPDATE totals SET value = value + (NEW.finished_at - NEW.started_at)
            WHERE name = 'completed_seconds';
    END;
    """,
    # version 2: a result that arrives after its attempt was ended by the
    # broker (agent lost) is kept here, so users can see what the old run did.
    """
    ALTER TABLE attempts ADD COLUMN late_result TEXT;
    """,
    # version 3: attempt ids are fencing tokens and must never be issued twice.
    # A plain INTEGER PRIMARY KEY reuses the highest id after its row is
    # deleted (a released dispatch); AUTOINCREMENT never does.
    """
    CREATE TABLE attempts_v3 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_seq INTEGER NOT NULL REFERENCES jobs(seq) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        agent TEXT NOT NULL,
        dispatched_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        pid INTEGER,
        exit_code INTEGER,
        reason TEXT,
        stale INTEGER NOT NULL DEFAULT 0,
        stdout_bytes INTEGER NOT NULL DEFAULT 0,
        stderr_bytes INTEGER NOT NULL DEFAULT 0,
        stdout_end INTEGER NOT NULL DEFAULT 0,
        stderr_end INTEGER NOT NULL DEFAULT 0,
        late_result TEXT
    );
    INSERT INTO attempts_v3 (id, job_seq, number, agent, dispatched_at, started_at, finished_at,
                             pid, exit_code, reason, stale, stdout_bytes, stderr_bytes,
                             stdout_end, stderr_end, late_result)
        SELECT id, job_seq, number, agent, dispatched_at, started_at, finished_at, pid,
               exit_code, reason, stale, stdout_bytes, stderr_bytes, stdout_end, stderr_end,
               late_result FROM attempts;
    -- past the highest token the jobs table still names, too (its attempt row
    -- may be gone)
    INSERT INTO sqlite_sequence (name, seq) SELECT 'attempts_v3', 0
        WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'attempts_v3');
    UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT max(lease) FROM jobs), 0))
        WHERE name = 'attempts_v3';
    DROP TABLE attempts;
    ALTER TABLE attempts_v3 RENAME TO attempts;
    CREATE INDEX attempts_job ON attempts(job_seq, id);
    """,
    # version 4: the stats page's per-minute chart is seeded at start from the
    # attempts that ended in the last hour.
    """
    CREATE INDEX attempts_finished ON attempts(finished_at) WHERE finished_at IS NOT NULL;
    """,
    # version 5: new jobs are counted once per batch by insert_jobs (the only
    # place that inserts them): a trigger per row halved the enqueue rate.
    """
    DROP TRIGGER jobs_count_insert;
    """,
    # version 6: queues can be paused or limited (queuectl queue ...). While
    # any queue has a rule, a second claim index exists (Store.use_queue_index).
    """
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0,
        max_running INTEGER
    ) WITHOUT ROWID;
    """,
    # version 7: an attempt records the connection it was leased to (its owner
    # digest, broker/intake.py), so only that agent may report it or adopt it
    # after a restart. Times and numbers that agents could once report without
    # a check (1e300, inf, a pid of 2**40) are repaired: they made every read
    # of their job fail. A time that is no time becomes the broker's own
    # nearest one; a number out of range becomes unknown.
    f"""
    ALTER TABLE attempts ADD COLUMN owner BLOB;
    UPDATE attempts SET
        started_at = CASE WHEN {_sane("started_at")} THEN started_at END,
        finished_at = CASE WHEN {_sane("finished_at")} THEN finished_at
                           ELSE coalesce(CASE WHEN {_sane("started_at")} THEN started_at END,
                                         dispatched_at) END,
        pid = CASE WHEN pid BETWEEN 1 AND {MAX_PID} THEN pid END,
        exit_code = CASE WHEN exit_code BETWEEN {EXIT_LOW} AND {EXIT_HIGH} THEN exit_code END
    WHERE NOT ({_sane("started_at")} AND {_sane("finished_at")})
       OR NOT coalesce(pid BETWEEN 1 AND {MAX_PID}, 1)
       OR NOT coalesce(exit_code BETWEEN {EXIT_LOW} AND {EXIT_HIGH}, 1);
    UPDATE jobs SET
        started_at = CASE WHEN {_sane("started_at")} THEN started_at END,
        finished_at = CASE WHEN {_sane("finished_at")} THEN finished_at ELSE updated_at END,
        exit_code = CASE WHEN exit_code BETWEEN {EXIT_LOW} AND {EXIT_HIGH} THEN exit_code END
    WHERE NOT ({_sane("started_at")} AND {_sane("finished_at")})
       OR NOT coalesce(exit_code BETWEEN {EXIT_LOW} AND {EXIT_HIGH}, 1);
    UPDATE totals SET value = (SELECT total(max(0, finished_at - started_at)) FROM jobs
                               WHERE state = 'completed' AND started_at IS NOT NULL
                               AND finished_at IS NOT NULL)
        WHERE name = 'completed_seconds' AND NOT (value BETWEEN 0 AND 1e15);
    """,
    # A batch streamed in chunks (enqueue --file, broker/batches.py) is staged in
    # jobs: its rows carry the batch id and due = 2, which no claim or timer
    # index covers, and every read leaves them out until the batch is
    # committed. Every staged row's seq lies in [first_seq, last_seq]; a commit
    # or an abort walks that range a slice at a time, next_seq being how far it
    # got. No index on jobs.batch: a plain enqueue pays one NULL column.
    """
    ALTER TABLE jobs ADD COLUMN batch INTEGER;
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        state TEXT NOT NULL CHECK (state IN ('open', 'committed', 'done', 'aborted')),
        rows INTEGER NOT NULL DEFAULT 0,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        next_seq INTEGER,
        reason TEXT,
        created_at REAL NOT NULL,
        ended_at REAL,
        key BLOB  -- digest of the secret its client holds (broker/batches.py)
    );
    -- staged rows were never counted, so deleting them (an abort) must not uncount
    DROP TRIGGER jobs_count_delete;
    CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs WHEN OLD.batch IS NULL BEGIN
        UPDATE counts SET n = n - 1 WHERE state = OLD.state;
    END;
    """,
    # version 9: an attempt stores how it ended as an Outcome value, which code
    # matches (a cancel, a success); ``reason`` stays the text users read, with
    # its details (the signal, why it could not start). Attempts that ended
    # before get theirs from that text, as lifecycle.reason_text wrote it.
    f"""
    ALTER TABLE attempts ADD COLUMN outcome TEXT;
    UPDATE attempts SET outcome = CASE WHEN reason IS NULL THEN {literal(Outcome.OK)}
        {" ".join(f"WHEN reason GLOB '{text}' THEN {literal(outcome)}"
                  for text, outcome in _OUTCOMES_OF_REASONS)}
    END WHERE finished_at IS NOT NULL;
    """,
    # version 10: one name for an attempt's id in code, docs and the store: its
    # token. The job's column holding the token of its current attempt was "lease".
    """
    DROP INDEX jobs_lease;
    ALTER TABLE jobs RENAME COLUMN lease TO token;
    CREATE INDEX jobs_token ON jobs(token) WHERE token IS NOT NULL;
    """,
]


def migrate(conn: apsw.Connection, path: str) -> None:
    """Bring the store at ``path`` to the latest schema version; refuse a newer one."""
    version = conn.pragma("user_version")
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"{path} has schema version {version}; this QueueCTL knows up to "
            f"{len(MIGRATIONS)}. Upgrade QueueCTL.")
    # Off while migrating: rebuilding a table (drop the old one, rename the
    # new) must not cascade to the rows that reference it.
    conn.pragma("foreign_keys", 0)
    for number in range(version, len(MIGRATIONS)):
        with conn:
            conn.execute(MIGRATIONS[number])
            conn.pragma("user_version", number + 1)
        log.info("store %s migrated to schema version %d", path, number + 1)
    conn.pragma("foreign_keys", 1)
