import CCurl
import Foundation
import Synchronization

/// One HTTP POST attempt as handed to the driver thread.
struct HTTPAttempt: Sendable {
    var url: String
    var body: Data
    /// Header lines ("Name: value"). May hold the Authorization header: it lives only in memory
    /// and is passed straight to libcurl.
    var headers: [String]
    var timeoutMilliseconds: Int
    var connectTimeoutMilliseconds: Int
    /// A GET (the body is ignored) instead of a POST.
    var get = false
}

/// What libcurl reported for one attempt.
struct HTTPResult: Sendable {
    /// CURLcode as an integer; 0 means the exchange completed (any HTTP status).
    var curlCode: Int
    /// libcurl's error text when curlCode != 0.
    var curlMessage: String
    var status: Int
    var body: Data
    var retryAfter: String?
    var elapsedSeconds: Double
}

enum DriverOutcome: Sendable {
    case finished(HTTPResult)
    case cancelled
}

/// Shared between the waiting task and the driver so a cancellation that races the submission
/// is never lost.
final class AttemptToken: Sendable {
    private let cancelledFlag = Mutex(false)
    var isCancelled: Bool { cancelledFlag.withLock { $0 } }
    func markCancelled() { cancelledFlag.withLock { $0 = true } }
}

private struct Submission: Sendable {
    var token: AttemptToken
    var attempt: HTTPAttempt
    var continuation: CheckedContinuation<DriverOutcome, Never>
}

private struct Inbox: Sendable {
    var submissions: [Submission] = []
    var cancels: [AttemptToken] = []
    var stopRequested = false
    var terminated = false
    var threadStarted = false
    var driverThread: pthread_t? = nil
}

/// Owns one libcurl multi handle on one dedicated thread, which loops on `curl_multi_poll`.
/// Other threads only touch `inbox` (under its lock) and call `curl_multi_wakeup`, which libcurl
/// documents as safe from any thread. All other state is confined to the driver thread.
final class CurlDriver: @unchecked Sendable {
    private let inbox = Mutex(Inbox())
    private let exited = DispatchSemaphore(value: 0)
    private let multi: UnsafeMutableRawPointer
    private let maxInFlight: Int

    // Driver-thread-only state.
    private struct Active {
        var submission: Submission
        var started: ContinuousClock.Instant
    }
    private var pending: [Submission] = []
    private var pendingHead = 0
    private var active: [UnsafeMutablePointer<ccurl_transfer>: Active] = [:]

    init(maxInFlight: Int) {
        _ = curlGlobalInit
        self.maxInFlight = max(1, maxInFlight)
        guard let m = curl_multi_init() else {
            fatalError("curl_multi_init failed (out of memory)")
        }
        multi = m
        // One connection per in-flight request to the same host, all kept alive for reuse.
        _ = ccurl_multi_setopt_long(m, CURLMOPT_MAX_HOST_CONNECTIONS, self.maxInFlight)
        _ = ccurl_multi_setopt_long(m, CURLMOPT_MAXCONNECTS, self.maxInFlight)
        Thread { [self] in self.run() }.start()
    }

    /// Runs one attempt; never throws. Cancelling the calling task aborts the transfer.
    func execute(_ attempt: HTTPAttempt) async -> DriverOutcome {
        let token = AttemptToken()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<DriverOutcome, Never>) in
                let accepted = inbox.withLock { box -> Bool in
                    if box.terminated || box.stopRequested { return false }
                    box.submissions.append(Submission(token: token, attempt: attempt, continuation: continuation))
                    _ = curl_multi_wakeup(multi)  // under the lock: cleanup cannot run concurrently
                    return true
                }
                if !accepted { continuation.resume(returning: .cancelled) }
            }
        } onCancel: {
            token.markCancelled()
            inbox.withLock { box in
                guard !box.terminated else { return }
                box.cancels.append(token)
                _ = curl_multi_wakeup(multi)
            }
        }
    }

    /// Stops the thread, cancelling queued and running transfers; waits for it unless called on it.
    func shutdown() {
        let (waitForExit, onDriver) = inbox.withLock { box -> (Bool, Bool) in
            let onDriver = box.driverThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false
            if box.terminated { return (false, onDriver) }
            box.stopRequested = true
            _ = curl_multi_wakeup(multi)
            return (true, onDriver)
        }
        if waitForExit && !onDriver {
            exited.wait()
            exited.signal()  // let any other concurrent shutdown() return too
        }
    }

    // MARK: - driver thread

    private func run() {
        ccurl_set_thread_name("saelabel-curl")
        inbox.withLock { $0.driverThread = pthread_self(); $0.threadStarted = true }
        var running: Int32 = 0
        while true {
            let (submissions, cancels, stop) = inbox.withLock { box in
                let taken = (box.submissions, box.cancels, box.stopRequested)
                box.submissions.removeAll()
                box.cancels.removeAll()
                return taken
            }
            if stop {
                // Submissions taken in the same turn as the stop would otherwise never be answered.
                for s in submissions { s.continuation.resume(returning: .cancelled) }
                break
            }
            for s in submissions {
                if s.token.isCancelled {
                    s.continuation.resume(returning: .cancelled)
                } else {
                    pending.append(s)
                }
            }
            for token in cancels { cancel(token) }
            startPending()

            _ = curl_multi_perform(multi, &running)
            var finishedAny = false
            var transfer: UnsafeMutablePointer<ccurl_transfer>? = nil
            var code = CURLE_OK
            while ccurl_multi_next_done(multi, &transfer, &code) != 0 {
                if let t = transfer { finish(t, code: code) }
                finishedAny = true
            }
            if finishedAny && pendingHead < pending.count { continue }
            _ = curl_multi_poll(multi, nil, 0, 1000, nil)
        }
        // Stop: cancel everything still queued or running, then refuse new work.
        for (t, a) in active {
            _ = curl_multi_remove_handle(multi, t.pointee.easy)
            ccurl_transfer_destroy(t)
            a.submission.continuation.resume(returning: .cancelled)
        }
        active.removeAll()
        for s in pending[pendingHead...] { s.continuation.resume(returning: .cancelled) }
        pending.removeAll()
        pendingHead = 0
        let late = inbox.withLock { box -> [Submission] in
            box.terminated = true
            let late = box.submissions
            box.submissions.removeAll()
            box.cancels.removeAll()
            return late
        }
        for s in late { s.continuation.resume(returning: .cancelled) }
        curl_multi_cleanup(multi)
        exited.signal()
    }

    private func startPending() {
        while active.count < maxInFlight && pendingHead < pending.count {
            let s = pending[pendingHead]
            pendingHead += 1
            start(s)
        }
        if pendingHead > 1024 && pendingHead * 2 > pending.count {
            pending.removeFirst(pendingHead)
            pendingHead = 0
        }
    }

    private func start(_ s: Submission) {
        func fail(_ message: String) {
            s.continuation.resume(returning: .finished(HTTPResult(
                curlCode: Int(CURLE_FAILED_INIT.rawValue), curlMessage: message, status: 0, body: Data(),
                retryAfter: nil, elapsedSeconds: 0)))
        }
        guard let t = ccurl_transfer_create() else { return fail("cannot create a libcurl handle") }
        for line in s.attempt.headers where ccurl_transfer_add_header(t, line) != 0 {
            ccurl_transfer_destroy(t)
            return fail("out of memory adding a header")
        }
        let rc = s.attempt.get
            ? ccurl_transfer_prepare_get(t, s.attempt.url, s.attempt.timeoutMilliseconds, s.attempt.connectTimeoutMilliseconds)
            : s.attempt.body.withUnsafeBytes { raw in
                ccurl_transfer_prepare_post(t, s.attempt.url, raw.baseAddress, raw.count,
                                            s.attempt.timeoutMilliseconds, s.attempt.connectTimeoutMilliseconds)
            }
        guard rc == CURLE_OK else {
            ccurl_transfer_destroy(t)
            return fail(String(cString: curl_easy_strerror(rc)))
        }
        let mc = curl_multi_add_handle(multi, t.pointee.easy)
        guard mc == CURLM_OK else {
            ccurl_transfer_destroy(t)
            return fail(String(cString: curl_multi_strerror(mc)))
        }
        active[t] = Active(submission: s, started: .now)
    }

    private func finish(_ t: UnsafeMutablePointer<ccurl_transfer>, code: CURLcode) {
        _ = curl_multi_remove_handle(multi, t.pointee.easy)
        guard let a = active.removeValue(forKey: t) else {
            ccurl_transfer_destroy(t)
            return
        }
        let elapsed = a.started.duration(to: .now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        var message = ""
        if code != CURLE_OK {
            let detail = withUnsafeBytes(of: t.pointee.errbuf) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            message = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
        }
        let retryAfter = withUnsafeBytes(of: t.pointee.retry_after) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        let body = t.pointee.body_len > 0 ? Data(bytes: t.pointee.body, count: t.pointee.body_len) : Data()
        let result = HTTPResult(curlCode: Int(code.rawValue), curlMessage: message,
                                status: ccurl_transfer_status(t), body: body,
                                retryAfter: retryAfter.isEmpty ? nil : retryAfter, elapsedSeconds: seconds)
        ccurl_transfer_destroy(t)
        a.submission.continuation.resume(returning: .finished(result))
    }

    private func cancel(_ token: AttemptToken) {
        if let index = pending[pendingHead...].firstIndex(where: { $0.token === token }) {
            let s = pending.remove(at: index)
            s.continuation.resume(returning: .cancelled)
            return
        }
        if let (t, a) = active.first(where: { $0.value.submission.token === token }) {
            _ = curl_multi_remove_handle(multi, t.pointee.easy)
            active.removeValue(forKey: t)
            ccurl_transfer_destroy(t)
            a.submission.continuation.resume(returning: .cancelled)
        }
        // Otherwise it already finished, or its submission will see token.isCancelled.
    }
}

/// curl_global_init must run once before any other libcurl call; Swift initialises globals
/// lazily and exactly once.
private let curlGlobalInit: Void = {
    _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT))
}()
