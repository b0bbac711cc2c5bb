import GRDB
import SAELabelCore

extension JobStore {
    /// Fetches every example and score row's text and returns how many rows and text bytes there were: the floor under
    /// any export's cost, which `saelabel-bench store` compares exports against.
    public func benchReadAllRows() throws(SAELabelError) -> (rows: Int, bytes: Int) {
        try read { db in
            var rows = 0
            var characters = 0
            let examples = try Row.fetchCursor(db, sql: "SELECT feature, tokens, activations FROM example ORDER BY feature, split, ordinal")
            while let row = try examples.next() {
                characters += (row["tokens"] as String).utf8.count + (row["activations"] as String).utf8.count
                rows += 1
            }
            let scores = try Row.fetchCursor(db, sql: "SELECT feature, details FROM score ORDER BY feature")
            while let row = try scores.next() {
                characters += (row["details"] as String).utf8.count
                rows += 1
            }
            return (rows, characters)
        }
    }
}
