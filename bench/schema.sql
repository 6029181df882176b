-- moe-bench DuckDB schema. The one schema file; bump SCHEMA_VERSION below and add a migration in
-- bench/store.py (MIGRATIONS) whenever a table changes.
-- schema_version: 2

CREATE TABLE IF NOT EXISTS schema_meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS sweeps (
    sweep_id        VARCHAR PRIMARY KEY,
    title           VARCHAR NOT NULL,
    spec_json       VARCHAR NOT NULL,
    state           VARCHAR NOT NULL,          -- queued | running | done | failed | crashed | cancelled
    host            VARCHAR,
    pid             INTEGER,
    device_key      VARCHAR,
    points_planned  INTEGER NOT NULL DEFAULT 0,
    points_done     INTEGER NOT NULL DEFAULT 0,
    log_path        VARCHAR,
    lock_path       VARCHAR,
    current_variant VARCHAR,
    message         VARCHAR,
    created_at      TIMESTAMPTZ NOT NULL,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    heartbeat_at    TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS runs (
    run_id            VARCHAR PRIMARY KEY,
    sweep_id          VARCHAR,
    name              VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    top_k             INTEGER NOT NULL,
    engine            VARCHAR NOT NULL,
    dtype             VARCHAR NOT NULL,
    device            VARCHAR NOT NULL,
    prompt_len        INTEGER NOT NULL,
    new_tokens        INTEGER NOT NULL,
    repeats           INTEGER NOT NULL,
    seed              INTEGER NOT NULL,
    experts           INTEGER,
    base_experts      INTEGER,
    kept_experts_json VARCHAR,
    prune_json        VARCHAR,
    model_fingerprint VARCHAR,
    device_name       VARCHAR,
    device_kind       VARCHAR,
    driver            VARCHAR,
    cuda              VARCHAR,
    torch_version     VARCHAR,
    transformers_version VARCHAR,
    bench_version     VARCHAR,
    git_commit        VARCHAR,
    host              VARCHAR,
    python_version    VARCHAR,
    bandwidth_gbs     DOUBLE,
    config_json       VARCHAR,
    rerun_of          VARCHAR,
    source            VARCHAR NOT NULL,        -- measured | imported:<file>
    state             VARCHAR NOT NULL,
    notes             VARCHAR,
    timing_convention VARCHAR NOT NULL DEFAULT 'decode',
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    engine_options    VARCHAR                  -- v2: JSON of the engine's settings (NULL: engine defaults)
);

CREATE TABLE IF NOT EXISTS points (
    run_id                VARCHAR NOT NULL,
    batch                 INTEGER NOT NULL,
    "repeat"              INTEGER NOT NULL,
    status                VARCHAR NOT NULL,    -- ok | oom | error | skipped
    error                 VARCHAR,
    total_tps             DOUBLE,
    per_stream_tps        DOUBLE,
    decode_s              DOUBLE,
    prefill_s             DOUBLE,
    tpot_p50_ms           DOUBLE,
    tpot_p90_ms           DOUBLE,
    tokens_generated      INTEGER,
    mem_weights_gib       DOUBLE,
    mem_peak_alloc_gib    DOUBLE,
    mem_peak_reserved_gib DOUBLE,
    mem_nvml_peak_gib     DOUBLE,
    mem_used_gib          DOUBLE,
    energy_j_per_token    DOUBLE,
    sm_clock_mhz          DOUBLE,
    throttle_reasons      BIGINT,
    bytes_per_step        DOUBLE,
    distinct_experts      DOUBLE,
    ceiling_tps           DOUBLE,
    mbu                   DOUBLE,
    started_at            TIMESTAMPTZ,
    finished_at           TIMESTAMPTZ,
    kv_bytes              DOUBLE,              -- v2: KV-cache bytes read per decode step at this batch
    PRIMARY KEY (run_id, batch, "repeat")
);
