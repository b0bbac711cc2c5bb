import Foundation
import Testing
@testable import SAELabelCollect
import SAELabelCore

/// The pipelined encode's hand-off between the reader and the workers, run with real threads the way
/// `DenseEncoder.encodePipelined` runs it (`onWorkerThreads`, `awaitSlot`, `submit`, `awaitIdle`, `close`).
@Suite struct ChunkScheduleTests {
    /// What the workers saw, under one lock.
    final class Log: @unchecked Sendable {
        let lock = NSLock()
        var batchesOfChunk: [[Int]]
        var holders: [Int]
        var problems: [String] = []
        var finishedOutsideChunkZero = 0

        init(chunks: Int) {
            batchesOfChunk = Array(repeating: [], count: chunks)
            holders = Array(repeating: 0, count: chunks)
        }

        func locked<T>(_ body: (Log) -> T) -> T {
            lock.lock()
            defer { lock.unlock() }
            return body(self)
        }
    }

    /// Every chunk does every batch once, in order, never on two workers at once; a slot is never refilled while a
    /// worker reads it; and a chunk held up on batch 0 does not hold the others back: they finish every batch that
    /// fits in the slots meanwhile (with a barrier per batch they could not start batch 1, and the test would fail
    /// at its deadline instead).
    @Test func chunksSeeEveryBatchInOrderAndNobodyWaitsForASlowChunk() throws {
        let chunks = 5, slots = 3, batches = 40, workers = 3
        let schedule = ChunkSchedule(chunks: chunks, slots: slots)
        let log = Log(chunks: chunks)
        let staged = UnsafeMutablePointer<Int>.allocate(capacity: slots)
        staged.initialize(repeating: -1, count: slots)
        defer { staged.deallocate() }
        let aheadOfSlowChunk = (chunks - 1) * slots
        let deadline = Date().addingTimeInterval(60)
        let submittedBatches = try onWorkerThreads(workers, { _ in
            while let (batch, chunk) = schedule.take() {
                let slot = batch % slots
                log.locked { log in
                    log.holders[chunk] += 1
                    if log.holders[chunk] > 1 { log.problems.append("chunk \(chunk) held twice at batch \(batch)") }
                    if staged[slot] != batch { log.problems.append("slot \(slot) holds \(staged[slot]) when batch \(batch) starts") }
                }
                if chunk == 0 && batch == 0 {
                    while log.locked({ $0.finishedOutsideChunkZero }) < aheadOfSlowChunk && Date() < deadline { usleep(1000) }
                } else {
                    usleep(UInt32.random(in: 0...300))
                }
                log.locked { log in
                    if staged[slot] != batch { log.problems.append("slot \(slot) refilled while batch \(batch) was read") }
                    if chunk == 0 && batch == 0 && log.finishedOutsideChunkZero < aheadOfSlowChunk {
                        log.problems.append("the other chunks finished \(log.finishedOutsideChunkZero) items while chunk 0 held batch 0")
                    }
                    if chunk != 0 { log.finishedOutsideChunkZero += 1 }
                    log.holders[chunk] -= 1
                    log.batchesOfChunk[chunk].append(batch)
                }
                schedule.finish(batch: batch, chunk: chunk)
            }
        }, caller: { () throws(SAELabelError) -> Int in
            defer { schedule.close() }
            for batch in 0..<batches {
                schedule.awaitSlot(for: batch)
                staged[batch % slots] = batch
                schedule.submit()
            }
            schedule.awaitIdle()
            return batches
        })
        #expect(submittedBatches == batches)
        #expect(log.problems.isEmpty, "\(log.problems.prefix(5))")
        for chunk in 0..<chunks { #expect(log.batchesOfChunk[chunk] == Array(0..<batches), "chunk \(chunk)") }
    }

    /// The reader's failure after some batches were handed over: those batches are finished before the reader's
    /// buffers go (`awaitIdle`), the workers return, and the error reaches the caller.
    @Test func aFailingReaderWaitsForTheBatchesItHandedOver() throws {
        let chunks = 4, slots = 2
        let schedule = ChunkSchedule(chunks: chunks, slots: slots)
        let log = Log(chunks: chunks)
        var finishedBeforeTheError = -1
        #expect(throws: SAELabelError.self) {
            _ = try onWorkerThreads(2, { _ in
                while let (batch, chunk) = schedule.take() {
                    usleep(UInt32.random(in: 0...500))
                    log.locked { $0.batchesOfChunk[chunk].append(batch) }
                    schedule.finish(batch: batch, chunk: chunk)
                }
            }, caller: { () throws(SAELabelError) -> Int in
                defer { schedule.close() }
                for batch in 0..<3 {
                    schedule.awaitSlot(for: batch)
                    schedule.submit()
                }
                schedule.awaitIdle()
                finishedBeforeTheError = log.locked { $0.batchesOfChunk.map(\.count).reduce(0, +) }
                throw SAELabelError.badInput(location: "activations", problem: "non-finite value")
            })
        }
        #expect(finishedBeforeTheError == 3 * chunks)
        for chunk in 0..<chunks { #expect(log.batchesOfChunk[chunk] == [0, 1, 2]) }
    }
}
