#!/bin/sh
# Builds the parser fuzzer and runs it. Usage: tests/fuzz/run.sh [seconds] [extra libFuzzer args]
# (default 60 s); FUZZ_TARGET=proxy runs the PROXY preamble fuzzer (fuzz_proxy.c) instead.
# parser.c is linked twice -- the SIMD build (SSE2 / NEON, the baseline) and a scalar build with
# renamed symbols -- so every input is also a differential test of the two paths. Crashes land in
# tests/fuzz/artifacts/; new coverage goes to a scratch corpus, not the committed seeds.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
secs=${1:-60}
[ $# -gt 0 ] && shift
CC=${CC:-clang}
out=${FUZZ_OUT:-$here/build}
mkdir -p "$out" "$here/artifacts" "$out/corpus"
cd "$out"  # libFuzzer writes fuzz-N.log files into the working directory

san="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all"
common="-std=c99 -g -O1 -Wall -Wextra -Werror -I$root/csrc -I$root/csrc/http"
simd=""
# simd stays empty: the SIMD scans use SSE2 / NEON, the baseline of x86-64 and arm64, no flag

if [ "${FUZZ_TARGET:-parser}" = proxy ]; then
    # The PROXY protocol preamble (csrc/http/proxy.c): its own harness and seeds.
    $CC $common $san -o "$out/fuzz_proxy" "$here/fuzz_proxy.c" "$root/csrc/http/proxy.c"
    mkdir -p "$out/corpus_proxy"
    exec "$out/fuzz_proxy" -max_total_time="$secs" -max_len=4200 -timeout=10 \
        -artifact_prefix="$here/artifacts/" "$@" "$out/corpus_proxy" "$here/corpus_proxy"
fi

$CC $common $san $simd -DSP_NO_SIMD \
    -Dsp_parse_request=sp_parse_request_scalar \
    -Dsp_request_framing=sp_request_framing_scalar \
    -Dsp_chunked_decode=sp_chunked_decode_scalar \
    -c "$root/csrc/http/parser.c" -o "$out/parser_scalar.o"
$CC $common $san $simd -DSP_FUZZ_DIFFERENTIAL -o "$out/fuzz_parser" \
    "$here/fuzz_parser.c" "$root/csrc/http/parser.c" "$root/csrc/http/env.c" "$out/parser_scalar.o"

exec "$out/fuzz_parser" -max_total_time="$secs" -max_len=4096 -timeout=10 \
    -artifact_prefix="$here/artifacts/" "$@" "$out/corpus" "$here/corpus"
