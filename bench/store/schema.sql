-- moe-bench DuckDB schema. The one schema file; bump SCHEMA_VERSION below and add a migration in
-- bench/store/__init__.py (MIGRATIONS) whenever a table changes.
-- schema_version: 3

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
    heartbeat_at    TIMESTAMPTZ,
    source          VARCHAR NOT NULL DEFAULT 'measured', -- v3: measured | imported:<file>
    cluster         VARCHAR                    -- v3: NULL (this GPU) | local | local:N | tcp://host:port
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
    engine_options    VARCHAR,                 -- v2: JSON of the engine's settings (NULL: engine defaults)
    weights           VARCHAR NOT NULL DEFAULT 'bf16', -- v3: expert weight format: bf16 | mxfp4
    weights_impl      VARCHAR,                 -- v3: how the engine ran them (native mxfp4 / dequantized to bf16)
    prompts           VARCHAR,                 -- v3: prompt source: random | domain:<name>@<text hash>
    gpu_index         INTEGER,                 -- v3: CUDA device index on its host
    gpu_uuid          VARCHAR,                 -- v3: NVML UUID of the card
    worker_address    VARCHAR                  -- v3: Dask worker that ran it (NULL: the bench process)
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
    experts_measured      BOOLEAN,             -- v3: distinct_experts counted by the engine (true) or assumed
    bandwidth_source      VARCHAR,             -- v3: the bandwidth MBU divides by: measured | datasheet
    PRIMARY KEY (run_id, batch, "repeat")
);

-- v3: routing statistics of a model over a text domain (bench calibrate), and quality per run (bench quality).
CREATE TABLE IF NOT EXISTS calibrations (
    calibration_id    VARCHAR PRIMARY KEY,
    model             VARCHAR NOT NULL,
    model_fingerprint VARCHAR NOT NULL,
    domain            VARCHAR NOT NULL,
    text_hash         VARCHAR NOT NULL,
    text_source       VARCHAR,                 -- what the text was (paths, built-in domain description)
    tokenizer         VARCHAR NOT NULL,        -- the model's own | byte-level (synthetic presets) | random
    tokens            BIGINT NOT NULL,
    layers            INTEGER NOT NULL,
    experts           INTEGER NOT NULL,
    top_k             INTEGER NOT NULL,
    device            VARCHAR,
    seconds           DOUBLE,
    created_at        TIMESTAMPTZ NOT NULL,
    text_spec         VARCHAR,                 -- what to re-read for held-out text: builtin:code | a path
    budget            BIGINT                   -- the token budget asked for (tokens may be fewer: short text)
);

CREATE TABLE IF NOT EXISTS calibration_experts (
    calibration_id VARCHAR NOT NULL,
    layer          INTEGER NOT NULL,
    expert         INTEGER NOT NULL,
    tokens_routed  BIGINT NOT NULL,
    mean_weight    DOUBLE,                     -- mean routing weight over the tokens routed to it
    saliency       DOUBLE,                     -- REAP: mean of routing weight x ||expert output|| over those tokens
    PRIMARY KEY (calibration_id, layer, expert)
);

CREATE TABLE IF NOT EXISTS quality (
    run_id      VARCHAR NOT NULL,
    domain      VARCHAR NOT NULL,
    metric      VARCHAR NOT NULL,              -- kl | top1_agreement | perplexity | base_perplexity
    value       DOUBLE,
    tokens      BIGINT,
    base_run_id VARCHAR,
    seconds     DOUBLE,
    text_hash   VARCHAR,                       -- the domain text whose held-out tail was read
    tokenizer   VARCHAR,                       -- own | byte-level (synthetic presets)
    PRIMARY KEY (run_id, domain, metric)
);
