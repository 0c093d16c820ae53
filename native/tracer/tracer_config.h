// The session's settings and probes, read from the JS values lib/ passes (lib/native/addon.ts).
#pragma once

#include <napi.h>

#include <vector>

#include "tracer/trace_session.h"

namespace ebpf_leak {

// new Tracer(config): throws a TypeError naming a field that is missing or of the wrong type.
TracerConfig TracerConfigFromJs(const Napi::Object& config);
// An array of {fn, path, entryOffset, returnOffset}; none when `value` is not an array.
std::vector<ProbeSpec> ProbesFromJs(const Napi::Value& value);

}  // namespace ebpf_leak
