#!/usr/bin/env bash
# Builds the libFuzzer binaries of saelabel's file parsers into .build/fuzz:
#   fuzz-collect  safetensors, cfg.json, tokenizer.json, delphi latent cache (SAELABEL_FUZZ_TARGET picks one)
#   fuzz-job      the job file (TOML)
# The parser modules (SAELabelCollect; JobConfig.swift of SAELabelRun) are compiled from the library sources
# with -sanitize=fuzzer,address, so libFuzzer sees their coverage and ASan their memory errors; the modules
# they import are linked from the ordinary debug build (`swift build`), uninstrumented.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product saelabel >/dev/null
BIN=$(swift build --show-bin-path)
CHECKOUTS=.build/checkouts
OUT=.build/fuzz
mkdir -p "$OUT"

# One static archive per module, so the linker pulls in only the objects the parsers reach.
libraries=()
for module in SAELabelKernels SAELabelStore SAELabelCore TOMLKit CTOML GRDB Mustache Crypto CryptoBoringWrapper CCryptoBoringSSLShims \
              CCryptoBoringSSL SwiftASN1; do
  [ -d "$BIN/$module.build" ] || continue
  rm -f "$OUT/lib$module.a"
  find "$BIN/$module.build" -name '*.o' ! -name '*.swiftmodule.o' -print0 | xargs -0 ar rcs "$OUT/lib$module.a"
  libraries+=("-l$module")
done

flags=(-sanitize=fuzzer,address -parse-as-library -swift-version 6 -Onone -g -I "$BIN/Modules" -L "$OUT"
  -Xcc "-fmodule-map-file=$CHECKOUTS/swift-crypto/Sources/CCryptoBoringSSLShims/include/module.modulemap"
  -Xcc -I -Xcc "$CHECKOUTS/swift-crypto/Sources/CCryptoBoringSSLShims/include"
  -Xcc "-fmodule-map-file=$CHECKOUTS/swift-crypto/Sources/CCryptoBoringSSL/include/module.modulemap"
  -Xcc -I -Xcc "$CHECKOUTS/swift-crypto/Sources/CCryptoBoringSSL/include"
  -Xcc "-fmodule-map-file=$CHECKOUTS/GRDB.swift/Sources/GRDBSQLite/module.modulemap"
  -Xcc "-fmodule-map-file=$CHECKOUTS/TOMLKit/Sources/CTOML/include/CTOML/module.modulemap"
  -Xcc "-fmodule-map-file=Sources/COpenBLAS/module.modulemap" -I/usr/include/x86_64-linux-gnu/openblas-pthread
  -Xlinker --start-group "${libraries[@]}" -Xlinker --end-group -lsqlite3 -lopenblas -lstdc++)

# gold warns once per ASan helper symbol ("Cannot export local symbol"); harmless, so filtered out.
quiet_gold() { grep -v "Cannot export local symbol" >&2 || true; }
swiftc -module-name SAELabelCollect Sources/SAELabelCollect/*.swift Fuzz/FuzzCollect.swift "${flags[@]}" -o "$OUT/fuzz-collect" 2> >(quiet_gold)
swiftc -module-name SAELabelRun Sources/SAELabelRun/JobConfig.swift Fuzz/FuzzJobConfig.swift "${flags[@]}" -o "$OUT/fuzz-job" 2> >(quiet_gold)
echo "built $OUT/fuzz-collect and $OUT/fuzz-job"
