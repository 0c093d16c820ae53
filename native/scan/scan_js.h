// What JS sees of a scan (native/scan/scan_session.h).
#pragma once

#include <napi.h>

#include "scan/scan_session.h"

namespace ebpf_leak {

// { entries, kinds, heuristics, indirect, owners, lostEdges, stats }; takes the outcome's entries.
Napi::Object ScanOutcomeToJs(Napi::Env env, ScanOutcome* outcome);

}  // namespace ebpf_leak
