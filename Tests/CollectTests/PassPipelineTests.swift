import Foundation
import Testing
@testable import SAELabelCollect
import SAELabelCore

/// The one-BLAS-thread hand-over from the GEMM thread to the pass thread, run with real threads the way
/// `DenseEncoder.encodeWithPassThread` runs it (`onWorkerThreads`, `awaitSlot`, `awaitBuffer`, `submit`, `awaitIdle`, `close`).
@Suite struct PassPipelineTests {
    final class Log: @unchecked Sendable {
        let lock = NSLock()
        var passed: [Int] = []
        var problems: [String] = []

        func locked<T>(_ body: (Log) -> T) -> T {
            lock.lock()
            defer { lock.unlock() }
            return body(self)
        }
    }

    /// Every item is passed once, in the order it was made; the chunk buffer and the batch slot it names still hold
    /// its data when the pass ends (neither is refilled while read), with passes and GEMMs of random lengths.
    @Test func itemsArePassedInOrderAndNoBufferOrSlotIsRefilledWhileRead() throws {
        let chunks = 3, slots = PassPipeline.batchSlots, batches = 30
        let pipeline = PassPipeline(chunks: chunks, slots: slots)
        let buffers = UnsafeMutablePointer<Int>.allocate(capacity: PassPipeline.depth)
        buffers.initialize(repeating: -1, count: PassPipeline.depth)
        let staged = UnsafeMutablePointer<Int>.allocate(capacity: slots)
        staged.initialize(repeating: -1, count: slots)
        defer { buffers.deallocate(); staged.deallocate() }
        let log = Log()
        let made = try onWorkerThreads(1, { _ in
            while let item = pipeline.take() {
                let id = item.batch * chunks + item.chunk
                let check = { (when: String) in
                    log.locked { log in
                        if buffers[item.buffer] != id { log.problems.append("buffer \(item.buffer) holds \(buffers[item.buffer]) \(when) item \(id)") }
                        if staged[item.batch % slots] != item.batch {
                            log.problems.append("slot \(item.batch % slots) holds batch \(staged[item.batch % slots]) \(when) item \(id)")
                        }
                    }
                }
                check("at the start of")
                usleep(UInt32.random(in: 0...400))
                check("at the end of")
                log.locked { $0.passed.append(id) }
                pipeline.finish()
            }
        }, caller: { () throws(SAELabelError) -> Int in
            defer { pipeline.close() }
            for batch in 0..<batches {
                pipeline.awaitSlot(for: batch)
                log.locked { _ in staged[batch % slots] = batch }
                for chunk in 0..<chunks {
                    let buffer = pipeline.awaitBuffer()
                    log.locked { _ in buffers[buffer] = batch * chunks + chunk }
                    usleep(UInt32.random(in: 0...200))
                    pipeline.submit()
                }
            }
            pipeline.awaitIdle()
            return batches * chunks
        })
        #expect(made == batches * chunks)
        #expect(log.problems.first == nil, "\(log.problems.count) problems, the first: \(log.problems.prefix(5))")
        #expect(log.passed == Array(0..<(batches * chunks)))
    }

    /// The GEMM thread's failure after some items were handed over: they are passed before its buffers go
    /// (`awaitIdle`), the pass thread returns, and the error reaches the caller.
    @Test func aFailingReaderWaitsForTheItemsItHandedOver() throws {
        let pipeline = PassPipeline(chunks: 2, slots: PassPipeline.batchSlots)
        let log = Log()
        var passedBeforeTheError = -1
        #expect(throws: SAELabelError.self) {
            _ = try onWorkerThreads(1, { _ in
                while pipeline.take() != nil {
                    usleep(UInt32.random(in: 0...500))
                    log.locked { $0.passed.append($0.passed.count) }
                    pipeline.finish()
                }
            }, caller: { () throws(SAELabelError) -> Int in
                defer { pipeline.close() }
                for batch in 0..<3 {
                    pipeline.awaitSlot(for: batch)
                    for _ in 0..<2 {
                        _ = pipeline.awaitBuffer()
                        pipeline.submit()
                    }
                }
                pipeline.awaitIdle()
                passedBeforeTheError = log.locked { $0.passed.count }
                throw SAELabelError.badInput(location: "activations", problem: "non-finite value")
            })
        }
        #expect(passedBeforeTheError == 6)
    }
}
