import Foundation
import Testing
@testable import SAELabelCollect

/// When saelabel asks OpenBLAS for other kernels than the ones it chose (`BLASKernels`).
struct BLASKernelsTests {
    /// The flags line of /proc/cpuinfo on an Intel Emerald Rapids VM (model 207), where Debian 12's OpenBLAS
    /// 0.3.21 falls back to "Prescott".
    static let emeraldRapids = Set("""
        fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb \
        rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 \
        sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch cpuid_fault \
        fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb \
        avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 arat avx512vbmi umip avx512_vbmi2 \
        gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid cldemote movdiri movdir64b fsrm serialize tsxldtrk \
        avx512_fp16 arch_capabilities
        """.split(separator: " ").map(String.init))

    /// An AVX2 CPU without AVX-512 (the flags an AMD Zen 2 reports that matter here).
    static let avx2Only: Set<String> = ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"]

    @Test func theGenericFallbackOnAnAVX512CPUGetsTheSkylakeXKernels() {
        #expect(BLASKernels.better(than: "Prescott", cpuFlags: Self.emeraldRapids) == "SkylakeX")
        #expect(BLASKernels.better(than: "Core2", cpuFlags: Self.emeraldRapids) == "SkylakeX")
    }

    @Test func theGenericFallbackOnAnAVX2CPUGetsTheHaswellKernels() {
        #expect(BLASKernels.better(than: "Prescott", cpuFlags: Self.avx2Only) == "Haswell")
        var withoutFMA = Self.avx2Only
        withoutFMA.remove("fma")
        #expect(BLASKernels.better(than: "Prescott", cpuFlags: withoutFMA) == nil)
    }

    /// Kernels OpenBLAS chose for a CPU it knows are kept, even where others would also run (a Zen 4 reports
    /// AVX-512 and OpenBLAS 0.3.21 gives it the Haswell kernels on purpose).
    @Test(arguments: ["Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", "SandyBridge"])
    func kernelsChosenForAKnownCPUAreKept(chosen: String) {
        #expect(BLASKernels.better(than: chosen, cpuFlags: Self.emeraldRapids) == nil)
    }

    @Test func aCPUWithoutAVX2KeepsTheGenericKernels() {
        #expect(BLASKernels.better(than: "Prescott", cpuFlags: ["sse", "sse2", "sse3", "ssse3", "sse4_1", "sse4_2", "avx"]) == nil)
        #expect(BLASKernels.better(than: "Prescott", cpuFlags: []) == nil)
    }

    /// The loaded library names its kernels, and the log line starts with that name.
    @Test func theLoadedKernelsAreNamed() {
        #expect(!BLASKernels.current.isEmpty && BLASKernels.current != "unknown")
        #expect(BLASKernels.description.hasPrefix("OpenBLAS kernels \(BLASKernels.current)"))
    }
}
