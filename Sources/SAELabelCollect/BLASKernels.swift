import COpenBLAS
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Which of OpenBLAS's kernels collect's GEMMs run on, and a way round OpenBLAS not knowing the CPU.
///
/// OpenBLAS picks its kernels when it loads, from the CPU's model number. A release older than the CPU does not
/// know the model and falls back to its generic SSE3 kernels ("Prescott"): Debian 12's OpenBLAS 0.3.21 does so on
/// Intel's Emerald Rapids (model 207), where sgemm then runs at about a fifth of the AVX-512 kernels' rate. The
/// kernels can only be chosen before the library loads (`OPENBLAS_CORETYPE`), so the command-line tools start
/// themselves again with it set when the CPU has the instructions and OpenBLAS chose the fallback.
public enum BLASKernels {
    /// The environment variable OpenBLAS reads when it loads.
    public static let coreTypeVariable = "OPENBLAS_CORETYPE"
    /// Set on the relaunched process: says what OpenBLAS had chosen, so it is relaunched once at most.
    public static let fallbackVariable = "SAELABEL_OPENBLAS_FALLBACK"

    /// The kernels OpenBLAS runs on, as it names them ("SkylakeX", "Haswell", "Prescott", …).
    public static var current: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }

    /// OpenBLAS's cores that use neither AVX2 nor AVX-512: what it falls back to for a CPU it does not know.
    static let generic: Set<String> = ["prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "katmai", "coppermine",
                                       "northwood", "banias", "opteron", "barcelona"]

    /// The kernels to ask for instead of `chosen`, given the CPU's feature flags (as /proc/cpuinfo spells them):
    /// nil unless OpenBLAS chose a generic core on a CPU with AVX2 and FMA. AVX-512 kernels need the five
    /// subsets SkylakeX's kernels use. The flags are read only for a generic core: every command starts here.
    public static func better(than chosen: String, cpuFlags readFlags: @autoclosure () -> Set<String>) -> String? {
        guard generic.contains(chosen.lowercased()) else { return nil }
        let cpuFlags = readFlags()
        if cpuFlags.isSuperset(of: ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"]) { return "SkylakeX" }
        if cpuFlags.isSuperset(of: ["avx2", "fma"]) { return "Haswell" }
        return nil
    }

    /// The first processor's flags in /proc/cpuinfo (empty where there is none).
    static func cpuFlags() -> Set<String> {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return [] }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
    }

    /// Starts this program again with `OPENBLAS_CORETYPE` set when OpenBLAS fell back to generic kernels on a CPU
    /// that has AVX2 or AVX-512 (see the type's note). Does nothing when the user set `OPENBLAS_CORETYPE`, when this
    /// process is already the relaunched one, or when the relaunch fails (the program then runs as it would have).
    /// Call first thing in `main`, before any thread starts.
    public static func relaunchOnFasterKernelsIfNeeded() {
        #if os(Linux)
        guard getenv(coreTypeVariable) == nil, getenv(fallbackVariable) == nil else { return }
        let chosen = current
        guard let better = better(than: chosen, cpuFlags: cpuFlags()) else { return }
        setenv(coreTypeVariable, better, 1)
        setenv(fallbackVariable, chosen, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // Still here: the relaunch failed; carry on with the kernels OpenBLAS chose.
        unsetenv(coreTypeVariable)
        unsetenv(fallbackVariable)
        #endif
    }

    /// One line for logs: the kernels in use, and what OpenBLAS had chosen when saelabel relaunched itself.
    public static var description: String {
        if let fallback = getenv(fallbackVariable).map({ String(cString: $0) }) {
            return "OpenBLAS kernels \(current) (OpenBLAS chose \(fallback) for this CPU, which it does not know; \(coreTypeVariable) set by saelabel)"
        }
        return "OpenBLAS kernels \(current)"
    }
}
