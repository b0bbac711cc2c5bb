import GRDB

/// The job store's versioned schema. Add a migration for every change; never edit a shipped one.
enum Schema {
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            // Key/value settings of the job: its configuration, SAE name, hook, corpus counts.
            try db.create(table: "job_setting") { t in
                t.primaryKey("key", .text)
                t.column("value", .text).notNull()
            }
            // What the inputs were when the job started, so a resumed job refuses changed files.
            try db.create(table: "input_fingerprint") { t in
                t.primaryKey("role", .text)
                t.column("path", .text).notNull()
                t.column("size", .integer).notNull()
                t.column("sha256", .text).notNull()
                t.column("version", .integer).notNull().defaults(to: 1)
            }
            try db.create(table: "feature") { t in
                t.primaryKey("id", .integer)
                t.column("state", .text).notNull().indexed()
                t.column("failed_stage", .text)
                t.column("failure_reason", .text)
                t.column("attempts", .integer).notNull().defaults(to: 0)
                t.column("note", .text)
                t.column("frequency", .double)
                t.column("max_activation", .double)
                t.column("mean_activation", .double)
                t.column("activating_tokens", .integer)
                t.column("activating_windows", .integer)
                t.column("histogram", .text)
                t.column("updated_at", .datetime).notNull()
            }
            try db.create(table: "example") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("feature", .integer).notNull().references("feature", onDelete: .cascade)
                t.column("split", .text).notNull()
                t.column("kind", .text).notNull()
                t.column("ordinal", .integer).notNull()
                t.column("sequence", .integer).notNull()
                t.column("start", .integer).notNull()
                t.column("tokens", .text).notNull()        // JSON array of strings
                t.column("activations", .text).notNull()   // JSON array of numbers
                t.uniqueKey(["feature", "split", "ordinal"])
            }
            // A labeling pass: one (explainer, prompt, SAE version). Old passes' labels are kept.
            try db.create(table: "explanation") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("feature", .integer).notNull().references("feature", onDelete: .cascade)
                t.column("pass", .text).notNull()
                t.column("text", .text).notNull()
                t.column("explainer_model", .text).notNull()
                t.column("prompt_hash", .text).notNull()
                t.column("raw_response", .text)
                t.column("created_at", .datetime).notNull()
                t.uniqueKey(["feature", "pass"])
            }
            try db.create(table: "score") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("explanation", .integer).notNull().references("explanation", onDelete: .cascade)
                t.column("feature", .integer).notNull()
                t.column("scorer", .text).notNull()        // simulation | detection | fuzzing
                t.column("value", .double)                 // NULL = could not be computed
                t.column("model", .text).notNull()
                t.column("prompt_hash", .text).notNull()
                t.column("details", .text).notNull()       // JSON: secondary metrics, per-window simulated values, failures
                t.column("created_at", .datetime).notNull()
                t.uniqueKey(["explanation", "scorer"])
            }
            // Content-addressed LLM responses: a finished call is never paid for twice.
            try db.create(table: "llm_response") { t in
                t.primaryKey("key", .text)
                t.column("body", .blob).notNull()
                t.column("created_at", .datetime).notNull()
            }
            try db.create(table: "llm_call") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("key", .text).notNull()
                t.column("endpoint", .text).notNull()
                t.column("model", .text).notNull()
                t.column("tag", .text).notNull()
                t.column("prompt_tokens", .integer).notNull()
                t.column("completion_tokens", .integer).notNull()
                t.column("latency_ms", .double).notNull()
                t.column("outcome", .text).notNull()
                t.column("attempt", .integer).notNull()
                t.column("created_at", .datetime).notNull()
            }
        }
        // The labeling passes (see Passes.swift): what each pass was made from, for `saelabel passes`.
        migrator.registerMigration("v2-labeling-passes") { db in
            try db.create(table: "labeling_pass") { t in
                t.primaryKey("id", .text)
                t.column("explainer", .text).notNull()
                t.column("explainer_model", .text).notNull()
                t.column("explainer_prompt_hash", .text).notNull()
                t.column("collect_settings", .text).notNull()
                t.column("inputs", .text).notNull()
                t.column("input_version", .integer).notNull()
                t.column("created_at", .datetime).notNull()
            }
            // A failed score drops its unusable cached answers by call tag (ScoreStep).
            try db.create(index: "llm_call_tag", on: "llm_call", columns: ["tag"])
        }
        // Batch mode (BatchStore.swift): requests waiting for or sent in a provider batch, and the batches,
        // so a run killed while waiting polls the same batches again instead of submitting twice.
        migrator.registerMigration("v3-batch-requests") { db in
            try db.create(table: "batch_request") { t in
                t.primaryKey("key", .text)
                t.column("stage", .text).notNull()
                t.column("path", .text).notNull()
                t.column("body", .blob).notNull()
                t.column("state", .text).notNull()  // queued | submitted | answered | failed
                t.column("batch_id", .text)
                t.column("error", .text)
                t.column("created_at", .datetime).notNull()
            }
            try db.create(table: "llm_batch") { t in
                t.primaryKey("id", .text)
                t.column("stage", .text).notNull()
                t.column("input_file_id", .text).notNull()
                t.column("status", .text).notNull()
                t.column("done", .boolean).notNull().defaults(to: false)
                t.column("created_at", .datetime).notNull()
            }
        }
        // Label carry-over (CarryOver.swift): each SAE version's decoder directions, and which labels were carried.
        migrator.registerMigration("v3-carry-over") { db in
            try db.create(table: "decoder_direction") { t in
                t.column("input_version", .integer).notNull()
                t.column("feature", .integer).notNull()
                t.column("direction", .blob).notNull()     // unit-length W_dec row, float32 little-endian
                t.primaryKey(["input_version", "feature"])
            }
            try db.create(table: "carried_label") { t in
                t.column("pass", .text).notNull()
                t.column("feature", .integer).notNull()
                t.column("source", .text).notNull()          // "this store" or the other store's path
                t.column("source_pass", .text).notNull()
                t.column("source_feature", .integer).notNull()
                t.column("cosine", .double).notNull()
                t.column("previous_score", .double)
                t.column("decision", .text).notNull()        // carried (awaiting its score) | kept | reexplained
                t.column("new_score", .double)
                t.primaryKey(["pass", "feature"])
            }
        }
        // Prompt tokens the server's prompt cache answered, per call (billed cheaper; see Status.swift).
        migrator.registerMigration("v2-llm-call-cached-tokens") { db in
            try db.alter(table: "llm_call") { t in
                t.add(column: "cached_prompt_tokens", .integer).notNull().defaults(to: 0)
            }
        }
        // Batch mode's calls are logged like synchronous ones, marked as batch calls (billed at the
        // batch discount); a queued request keeps its call tag for that log.
        migrator.registerMigration("v5-batch-call-accounting") { db in
            try db.alter(table: "llm_call") { t in
                t.add(column: "batch", .boolean).notNull().defaults(to: false)
            }
            try db.alter(table: "batch_request") { t in
                t.add(column: "tag", .text)
            }
        }
        // Each text window's tokens stored once (TextWindows.swift): collect keeps ~35 windows for each of tens of
        // thousands of features out of a few hundred distinct corpus windows, and the tokens JSON repeated per
        // example was two thirds of the store. `example` is rebuilt (SQLite cannot drop a NOT NULL column in place)
        // with every row, its id and its activations kept; its window is the one with its exact stored tokens text.
        migrator.registerMigration("v6-text-windows") { db in
            try db.create(table: "text_window") { t in
                t.primaryKey("id", .integer)
                t.column("sequence", .integer).notNull()
                t.column("start", .integer).notNull()
                t.column("tokens", .text).notNull()        // JSON array of strings
            }
            // Not unique on the tokens too: that would store each window's tokens twice (the synthetic and
            // the sparsest stores share few windows). Writers find a window by place, then compare its tokens.
            try db.create(index: "text_window_place", on: "text_window", columns: ["sequence", "start"])
            try db.execute(sql: """
                INSERT INTO text_window(sequence, start, tokens)
                SELECT sequence, start, tokens FROM example GROUP BY sequence, start, tokens ORDER BY MIN(id)
                """)
            try db.create(table: "example_by_window") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("feature", .integer).notNull().references("feature", onDelete: .cascade)
                t.column("split", .text).notNull()
                t.column("kind", .text).notNull()
                t.column("ordinal", .integer).notNull()
                // No foreign key: SQLite would scan every example for each window deleted (there is no index on
                // this column, which collect would pay for per row); only prune deletes windows, those no example uses.
                t.column("text_window", .integer).notNull()
                t.column("activations", .text).notNull()   // JSON array of numbers
                t.uniqueKey(["feature", "split", "ordinal"])
            }
            try db.execute(sql: """
                INSERT INTO example_by_window(id, feature, split, kind, ordinal, text_window, activations)
                SELECT e.id, e.feature, e.split, e.kind, e.ordinal, w.id, e.activations
                FROM example e JOIN text_window w ON w.sequence = e.sequence AND w.start = e.start AND w.tokens = e.tokens
                ORDER BY e.id
                """)
            try db.drop(table: "example")
            try db.rename(table: "example_by_window", to: "example")
        }
        return migrator
    }
}
