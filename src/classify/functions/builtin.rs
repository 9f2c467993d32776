//! Classify step (client → framing → **classify** → route → pool → server): what pgdecomp knows
//! about PostgreSQL's own functions before (or without) reading the catalog. Every name here is
//! in `pg_catalog` and was checked against PostgreSQL 15's `pg_proc` (the integration test
//! `tests/functions.rs` checks it again on every run).

/// pg_catalog functions whose every overload is STABLE or IMMUTABLE: the common ones in
/// application SQL (aggregates, window, string, math, date/time, json, arrays) and in what Rails
/// and GitLab ask the catalog. Sorted, for binary search.
#[rustfmt::skip]
pub(super) const SAFE: &[&str] = &[
    "abs", "age", "array_agg", "array_append", "array_cat", "array_dims", "array_fill",
    "array_in", "array_length", "array_lower", "array_ndims", "array_position",
    "array_positions", "array_prepend", "array_remove", "array_replace", "array_to_json",
    "array_to_string", "array_upper", "ascii", "avg", "bit_and", "bit_length", "bit_or",
    "bit_xor", "bool_and", "bool_or", "btrim", "cardinality", "cbrt", "ceil", "ceiling",
    "char_length", "character_length", "chr", "col_description", "concat", "concat_ws",
    "convert_from", "convert_to", "corr", "count", "covar_pop", "covar_samp", "cume_dist",
    "current_database", "current_schema", "current_schemas", "current_setting", "date_bin",
    "date_part", "date_trunc", "decode", "degrees", "dense_rank", "div", "encode", "every",
    "exp", "extract", "first_value", "floor", "format", "format_type", "gcd", "generate_series",
    "generate_subscripts", "has_column_privilege", "has_database_privilege",
    "has_function_privilege", "has_schema_privilege", "has_sequence_privilege",
    "has_table_privilege", "hashtext", "hashtextextended", "inet_client_addr",
    "inet_client_port", "inet_server_addr", "inet_server_port", "initcap", "isfinite",
    "json_agg", "json_array_elements", "json_array_elements_text", "json_array_length",
    "json_build_array", "json_build_object", "json_each", "json_each_text", "json_extract_path",
    "json_extract_path_text", "json_object", "json_object_agg", "json_object_keys",
    "json_populate_record", "json_populate_recordset", "json_strip_nulls", "json_to_record",
    "json_to_recordset", "json_typeof", "jsonb_agg", "jsonb_array_elements",
    "jsonb_array_elements_text", "jsonb_array_length", "jsonb_build_array", "jsonb_build_object",
    "jsonb_each", "jsonb_each_text", "jsonb_extract_path", "jsonb_extract_path_text",
    "jsonb_insert", "jsonb_object", "jsonb_object_agg", "jsonb_object_keys", "jsonb_path_exists",
    "jsonb_path_match", "jsonb_path_query", "jsonb_path_query_array", "jsonb_path_query_first",
    "jsonb_populate_record", "jsonb_populate_recordset", "jsonb_pretty", "jsonb_set",
    "jsonb_set_lax", "jsonb_strip_nulls", "jsonb_to_record", "jsonb_to_recordset",
    "jsonb_typeof", "justify_days", "justify_hours", "justify_interval", "lag", "last_value",
    "lcm", "lead", "left", "length", "ln", "log", "log10", "lower", "lpad", "ltrim", "make_date",
    "make_interval", "make_time", "make_timestamp", "make_timestamptz", "max", "md5", "min",
    "mod", "mode", "normalize", "now", "nth_value", "ntile", "num_nonnulls", "num_nulls",
    "obj_description", "octet_length", "overlay", "percent_rank", "percentile_cont",
    "percentile_disc", "pg_backend_pid", "pg_column_size", "pg_conf_load_time",
    "pg_current_snapshot", "pg_encoding_to_char", "pg_function_is_visible",
    "pg_get_constraintdef", "pg_get_expr", "pg_get_function_arguments",
    "pg_get_function_identity_arguments", "pg_get_function_result", "pg_get_functiondef",
    "pg_get_indexdef", "pg_get_keywords", "pg_get_partition_constraintdef", "pg_get_partkeydef",
    "pg_get_replica_identity_index", "pg_get_ruledef", "pg_get_serial_sequence",
    "pg_get_statisticsobjdef", "pg_get_triggerdef", "pg_get_userbyid", "pg_get_viewdef",
    "pg_has_role", "pg_index_column_has_property", "pg_indexam_has_property",
    "pg_options_to_table", "pg_postmaster_start_time", "pg_relation_filenode",
    "pg_relation_filepath", "pg_settings_get_flags", "pg_size_bytes", "pg_size_pretty",
    "pg_snapshot_xmax", "pg_snapshot_xmin", "pg_stat_get_activity", "pg_stat_get_backend_pid",
    "pg_stat_get_dead_tuples", "pg_stat_get_live_tuples", "pg_stat_get_numscans",
    "pg_stat_get_wal_receiver", "pg_stat_get_wal_senders", "pg_table_is_visible",
    "pg_tablespace_location", "pg_type_is_visible", "pg_typeof", "pg_visible_in_snapshot",
    "pg_wal_lsn_diff", "pi", "position", "pow", "power", "quote_ident", "quote_literal",
    "quote_nullable", "radians", "range_agg", "range_intersect_agg", "rank", "regexp_count",
    "regexp_instr", "regexp_like", "regexp_match", "regexp_matches", "regexp_replace",
    "regexp_split_to_array", "regexp_split_to_table", "regexp_substr", "repeat", "replace",
    "reverse", "right", "round", "row_number", "row_to_json", "rpad", "rtrim", "scale", "sha224",
    "sha256", "sha384", "sha512", "shobj_description", "sign", "split_part", "sqrt",
    "starts_with", "statement_timestamp", "stddev", "stddev_pop", "stddev_samp", "string_agg",
    "string_to_array", "string_to_table", "strpos", "substr", "substring", "sum", "text",
    "textlen", "timezone", "to_char", "to_date", "to_hex", "to_json", "to_jsonb", "to_number",
    "to_regclass", "to_regnamespace", "to_regproc", "to_regprocedure", "to_regrole",
    "to_regtype", "to_timestamp", "transaction_timestamp", "translate", "trim_array", "trunc",
    "txid_current_snapshot", "txid_snapshot_xmax", "txid_snapshot_xmin",
    "txid_visible_in_snapshot", "unnest", "upper", "var_pop", "var_samp", "variance", "version",
    "width_bucket", "xmlagg",
];

/// Names sqlparser turns into function calls that are syntax in PostgreSQL (no pg_proc row, or
/// evaluated by the executor): never side effects. Sorted.
#[rustfmt::skip]
const SYNTAX: &[&str] = &[
    "array", "coalesce", "current_catalog", "current_date", "current_role", "current_time",
    "current_timestamp", "current_user", "greatest", "least", "localtime", "localtimestamp",
    "nullif", "session_user", "user",
];

/// VOLATILE in pg_proc because their result changes between calls, not because they change
/// anything: each runs on a hot standby with no effect on the primary, so a read that calls
/// them stays a read whatever the catalog says. Sorted.
#[rustfmt::skip]
const READ_SAFE_VOLATILE: &[&str] = &[
    "clock_timestamp", "gen_random_uuid", "pg_blocking_pids", "pg_database_size",
    "pg_get_wal_replay_pause_state", "pg_indexes_size", "pg_is_in_recovery",
    "pg_is_wal_replay_paused", "pg_jit_available", "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp", "pg_lock_status",
    "pg_notification_queue_usage", "pg_partition_ancestors", "pg_partition_tree",
    "pg_relation_size", "pg_sleep", "pg_sleep_for", "pg_sleep_until", "pg_table_size",
    "pg_tablespace_size", "pg_total_relation_size", "random", "timeofday",
];

/// Built-ins that write, hold primary-side state or need a transaction ID, so they need the
/// primary whatever the catalog says: large objects, sequences, transaction IDs,
/// notifications, advisory locks, and the WAL-file functions that fail during recovery.
/// `set_config` is decided by its `is_local` argument, in the caller.
pub(super) fn always_writes(name: &str) -> bool {
    name.starts_with("lo_")
        || matches!(
            name,
            "loread"
                | "lowrite"
                | "nextval"
                | "setval"
                | "txid_current"
                | "txid_current_if_assigned"
                | "pg_current_xact_id"
                | "pg_current_xact_id_if_assigned"
                | "pg_notify"
                | "pg_walfile_name"
                | "pg_walfile_name_offset"
        )
        || ((name.starts_with("pg_advisory_") || name.starts_with("pg_try_advisory_"))
            && name.contains("lock"))
}

/// Known STABLE/IMMUTABLE, or syntax.
pub(super) fn is_safe(name: &str) -> bool {
    SAFE.binary_search(&name).is_ok() || SYNTAX.binary_search(&name).is_ok()
}

pub(super) fn is_read_safe_volatile(name: &str) -> bool {
    READ_SAFE_VOLATILE.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_and_disjoint() {
        for list in [SAFE, SYNTAX, READ_SAFE_VOLATILE] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
            for name in list {
                assert!(!always_writes(name), "{name}");
            }
        }
        for name in READ_SAFE_VOLATILE {
            assert!(!is_safe(name), "{name}");
        }
    }
}
