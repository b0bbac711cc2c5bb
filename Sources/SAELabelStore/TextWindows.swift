import GRDB
import SAELabelCore

/// The `text_window` table: one row per corpus window (its place and its tokens' JSON) however many examples
/// show it; an `example` row holds its activations and the window's id. A strong window tops hundreds of features,
/// so storing its tokens per example made them two thirds of a collected store.
enum TextWindows {
    /// An example with its window, for readers: select `exampleColumns` from `examplesJoined`
    /// (feature, split, kind, ordinal, sequence, start, tokens, activations).
    static let exampleColumns = "e.feature, e.split, e.kind, e.ordinal, w.sequence, w.start, w.tokens, e.activations"
    static let examplesJoined = "example e JOIN text_window w ON w.id = e.text_window"

    /// Deletes the windows no example shows any more (re-collected or merged-over features leave some) and
    /// returns how many. One pass over `example`, so only `prune` runs it.
    static func dropUnreferenced(_ db: Database) throws -> Int {
        try db.execute(sql: "DELETE FROM text_window WHERE id NOT IN (SELECT text_window FROM example)")
        return db.changesCount
    }
}

/// Copies features' examples from an attached store (`merge`): the windows they show that `main` lacks, then the
/// examples with their window ids remapped to `main`'s (each store numbers its windows itself).
struct ExampleCopier {
    private let copyWindows: Statement
    private let copyExamples: Statement

    init(from schema: String, _ db: Database) throws {
        let sameWindow = "m.sequence = w.sequence AND m.start = w.start AND m.tokens = w.tokens"
        copyWindows = try db.makeStatement(sql: """
            INSERT INTO main.text_window(sequence, start, tokens)
            SELECT w.sequence, w.start, w.tokens FROM \(schema).text_window w
            WHERE w.id IN (SELECT text_window FROM \(schema).example WHERE feature = ?)
              AND NOT EXISTS (SELECT 1 FROM main.text_window m WHERE \(sameWindow))
            GROUP BY w.sequence, w.start, w.tokens ORDER BY MIN(w.id)
            """)
        copyExamples = try db.makeStatement(sql: """
            INSERT INTO main.example(feature, split, kind, ordinal, text_window, activations)
            SELECT e.feature, e.split, e.kind, e.ordinal, (SELECT MIN(m.id) FROM main.text_window m WHERE \(sameWindow)), e.activations
            FROM \(schema).example e JOIN \(schema).text_window w ON w.id = e.text_window
            WHERE e.feature = ? ORDER BY e.id
            """)
    }

    func copy(feature: Int) throws {
        try copyWindows.execute(arguments: [feature])
        try copyExamples.execute(arguments: [feature])
    }
}

/// Where a window lies in the corpus, as `text_window` finds it (the tokens are compared after).
struct TextWindowPlace: Hashable {
    var sequence: Int
    var start: Int
}

/// A window whose `text_window` row is known: its tokens and the row's id.
struct ResolvedWindow {
    var tokens: [String]
    var id: Int64
}

/// The windows a collect run's earlier block commits stored, by place: their tokens and row ids. A wide SAE is
/// committed in blocks whose examples show mostly the same corpus windows (24,576 features in 8 blocks: 2,048
/// distinct windows, each in every block); with this, a later block neither decodes a window again (`tokens`)
/// nor looks its row up and re-encodes its tokens (`TextWindowWriter`). Only committed windows are added
/// (`JobStore.commitCollect` adopts a commit's after its transaction), so every id names a row. Bounded by
/// `capacityTokens`: a commit that would take it past that empties it instead (later blocks decode and look up
/// as without it), so a huge corpus costs time, not memory.
public final class StoredWindows: @unchecked Sendable {  // used by one commit at a time (collect's block writer)
    private(set) var known: [TextWindowPlace: ResolvedWindow] = [:]
    public let capacityTokens: Int
    public private(set) var tokenCount = 0

    public init(capacityTokens: Int) {
        self.capacityTokens = capacityTokens
    }

    /// The window at `sequence`/`start` with `length` tokens, when a commit stored it.
    public func tokens(sequence: Int, start: Int, length: Int) -> [String]? {
        guard let window = known[TextWindowPlace(sequence: sequence, start: start)], window.tokens.count == length else { return nil }
        return window.tokens
    }

    public var count: Int { known.count }

    /// A committed transaction's windows (a superset of `known`, which its writer started from).
    func adopt(_ windows: [TextWindowPlace: ResolvedWindow]) {
        let tokens = windows.values.reduce(0) { $0 + $1.tokens.count }
        (known, tokenCount) = tokens <= capacityTokens ? (windows, tokens) : ([:], 0)
    }
}

/// Finds or inserts collect's windows for `ExampleRowWriter`. A window is the same when its place and its tokens
/// are; the place alone is looked up (indexed) and the tokens compared, so the index does not hold them again.
final class TextWindowWriter {
    /// The first window this writer resolved (or was given) at each place. Collect shares one tokens array per
    /// window, so comparing a cached window's tokens is O(1) in the common case; one entry per place (not a list)
    /// keeps the lookup that every example row makes to a hash and a compare.
    private(set) var known: [TextWindowPlace: ResolvedWindow]
    /// Further windows at a place of `known` with other tokens (seldom: a store that mixes corpora).
    private var others: [TextWindowPlace: [ResolvedWindow]] = [:]
    private let find: Statement
    private let insert: Statement
    private let db: Database

    /// `known`: windows whose rows are stored (an earlier commit's), not looked up again.
    init(_ db: Database, known: [TextWindowPlace: ResolvedWindow] = [:]) throws {
        self.db = db
        self.known = known
        find = try db.makeStatement(sql: "SELECT id FROM text_window WHERE sequence = ? AND start = ? AND tokens = ? ORDER BY id LIMIT 1")
        insert = try db.makeStatement(sql: "INSERT INTO text_window(sequence, start, tokens) VALUES (?, ?, ?)")
    }

    /// The id of `window`'s row, inserting the row when the store has none with its place and tokens.
    func id(of window: ActivationWindow) throws -> Int64 {
        let place = TextWindowPlace(sequence: window.sequence, start: window.start)
        let first = known[place]
        if let first, first.tokens == window.tokens { return first.id }
        if first != nil, let other = others[place]?.first(where: { $0.tokens == window.tokens }) { return other.id }
        let tokens = CompactJSON.strings(window.tokens)
        let arguments: StatementArguments = [window.sequence, window.start, tokens]
        let id: Int64
        if let existing = try Int64.fetchOne(find, arguments: arguments) {
            id = existing
        } else {
            try insert.execute(arguments: arguments)
            id = db.lastInsertedRowID
        }
        let resolved = ResolvedWindow(tokens: window.tokens, id: id)
        if first == nil { known[place] = resolved } else { others[place, default: []].append(resolved) }
        return id
    }
}
