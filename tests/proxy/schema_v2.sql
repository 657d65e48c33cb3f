-- The schema prysmai wrote at schema version 2 (before projects), dumped verbatim from
-- sqlite_master of a new store made by commit ff30e75: the v2 -> v3 migration must accept it as is.

CREATE TABLE traces (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    method TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    http_status INTEGER,
    latency_ms REAL,
    ttft_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    cost_usd REAL,
    request_body TEXT,
    response_body TEXT,
    error TEXT,
    user_id TEXT,
    session_id TEXT,
    metadata TEXT,
    notes TEXT,
    response_model TEXT,
    provider_request_id TEXT
, key_id TEXT);

CREATE TABLE rollup_hour (
    hour INTEGER NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    unpriced INTEGER NOT NULL,
    PRIMARY KEY (hour, model, endpoint, status)
) WITHOUT ROWID;

CREATE TABLE rollup_state (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    folded_rowid INTEGER NOT NULL,
    fold_from INTEGER NOT NULL
);

CREATE TABLE rollup_hist_hour (
    period INTEGER NOT NULL,
    metric TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    min_ms REAL NOT NULL,
    max_ms REAL NOT NULL,
    PRIMARY KEY (period, metric, bucket)
) WITHOUT ROWID;

CREATE TABLE rollup_hist_day (
    period INTEGER NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    min_ms REAL NOT NULL,
    max_ms REAL NOT NULL,
    PRIMARY KEY (period, model, endpoint, metric, bucket)
) WITHOUT ROWID;

CREATE TRIGGER rollup_fold AFTER UPDATE OF folded_rowid ON rollup_state
WHEN NEW.folded_rowid > NEW.fold_from BEGIN
INSERT INTO rollup_hour (hour, model, endpoint, status, requests, prompt_tokens,
        completion_tokens, total_tokens, cost_usd, unpriced)
    SELECT CAST(created_at / 3600 AS INTEGER) * 3600, coalesce(model, ''), endpoint, status, count(*),
        coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0),
        coalesce(sum(cost_usd), 0), sum(cost_usd IS NULL)
    FROM traces WHERE rowid > NEW.fold_from AND rowid <= NEW.folded_rowid GROUP BY 1, 2, 3, 4
    ON CONFLICT (hour, model, endpoint, status) DO UPDATE SET
        requests = requests + excluded.requests,
        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens,
        total_tokens = total_tokens + excluded.total_tokens,
        cost_usd = cost_usd + excluded.cost_usd,
        unpriced = unpriced + excluded.unpriced;
INSERT INTO rollup_hist_hour (period, metric, bucket, n, min_ms, max_ms) SELECT * FROM (SELECT * FROM (SELECT CAST(created_at / 3600 AS INTEGER) * 3600, 'latency', CAST(ln(max(latency_ms, 0.001) * 1000) * 16 AS INTEGER), count(*), min(latency_ms), max(latency_ms)
        FROM traces WHERE rowid > NEW.fold_from AND rowid <= NEW.folded_rowid AND latency_ms IS NOT NULL GROUP BY 1, 2, 3) UNION ALL SELECT * FROM (SELECT CAST(created_at / 3600 AS INTEGER) * 3600, 'ttft', CAST(ln(max(ttft_ms, 0.001) * 1000) * 16 AS INTEGER), count(*), min(ttft_ms), max(ttft_ms)
        FROM traces WHERE rowid > NEW.fold_from AND rowid <= NEW.folded_rowid AND ttft_ms IS NOT NULL GROUP BY 1, 2, 3)) WHERE true
    ON CONFLICT (period, metric, bucket) DO UPDATE SET
        n = n + excluded.n,
        min_ms = min(min_ms, excluded.min_ms),
        max_ms = max(max_ms, excluded.max_ms);INSERT INTO rollup_hist_day (period, model, endpoint, metric, bucket, n, min_ms, max_ms) SELECT * FROM (SELECT * FROM (SELECT CAST(created_at / 86400 AS INTEGER) * 86400, coalesce(model, ''), endpoint, 'latency', CAST(ln(max(latency_ms, 0.001) * 1000) * 16 AS INTEGER), count(*), min(latency_ms), max(latency_ms)
        FROM traces WHERE rowid > NEW.fold_from AND rowid <= NEW.folded_rowid AND latency_ms IS NOT NULL GROUP BY 1, 2, 3, 4, 5) UNION ALL SELECT * FROM (SELECT CAST(created_at / 86400 AS INTEGER) * 86400, coalesce(model, ''), endpoint, 'ttft', CAST(ln(max(ttft_ms, 0.001) * 1000) * 16 AS INTEGER), count(*), min(ttft_ms), max(ttft_ms)
        FROM traces WHERE rowid > NEW.fold_from AND rowid <= NEW.folded_rowid AND ttft_ms IS NOT NULL GROUP BY 1, 2, 3, 4, 5)) WHERE true
    ON CONFLICT (period, model, endpoint, metric, bucket) DO UPDATE SET
        n = n + excluded.n,
        min_ms = min(min_ms, excluded.min_ms),
        max_ms = max(max_ms, excluded.max_ms);
END;

CREATE INDEX traces_key ON traces (key_id, created_at);

CREATE INDEX traces_agg ON traces (created_at, status, model, endpoint, latency_ms, ttft_ms,
    prompt_tokens, completion_tokens, total_tokens, cost_usd, user_id, session_id, id);

CREATE INDEX traces_user2 ON traces
    (user_id, created_at, status, total_tokens, cost_usd, latency_ms);

CREATE INDEX traces_session2 ON traces
    (session_id, created_at, status, total_tokens, cost_usd, latency_ms);

CREATE TRIGGER traces_rollup_delete AFTER DELETE ON traces
WHEN OLD.rowid <= (SELECT folded_rowid FROM rollup_state) BEGIN
    UPDATE rollup_hour SET requests = requests - 1,
        prompt_tokens = prompt_tokens - coalesce(OLD.prompt_tokens, 0),
        completion_tokens = completion_tokens - coalesce(OLD.completion_tokens, 0),
        total_tokens = total_tokens - coalesce(OLD.total_tokens, 0),
        cost_usd = cost_usd - coalesce(OLD.cost_usd, 0),
        unpriced = unpriced - (OLD.cost_usd IS NULL)
    WHERE hour = CAST(OLD.created_at / 3600 AS INTEGER) * 3600 AND model = coalesce(OLD.model, '')
        AND endpoint = OLD.endpoint AND status = OLD.status;
    UPDATE rollup_hist_hour SET n = n - 1 WHERE period = CAST(OLD.created_at / 3600 AS INTEGER) * 3600 AND metric = 'latency' AND bucket = CAST(ln(max(OLD.latency_ms, 0.001) * 1000) * 16 AS INTEGER);
    UPDATE rollup_hist_hour SET n = n - 1 WHERE period = CAST(OLD.created_at / 3600 AS INTEGER) * 3600 AND metric = 'ttft' AND bucket = CAST(ln(max(OLD.ttft_ms, 0.001) * 1000) * 16 AS INTEGER);
    UPDATE rollup_hist_day SET n = n - 1 WHERE period = CAST(OLD.created_at / 86400 AS INTEGER) * 86400 AND model = coalesce(OLD.model, '') AND endpoint = OLD.endpoint AND metric = 'latency' AND bucket = CAST(ln(max(OLD.latency_ms, 0.001) * 1000) * 16 AS INTEGER);
    UPDATE rollup_hist_day SET n = n - 1 WHERE period = CAST(OLD.created_at / 86400 AS INTEGER) * 86400 AND model = coalesce(OLD.model, '') AND endpoint = OLD.endpoint AND metric = 'ttft' AND bucket = CAST(ln(max(OLD.ttft_ms, 0.001) * 1000) * 16 AS INTEGER);
END;

INSERT INTO rollup_state (one, folded_rowid, fold_from) VALUES (1, 0, 0);
PRAGMA user_version = 2;
