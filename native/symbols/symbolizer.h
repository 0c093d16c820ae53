// Symbolizer: file offsets in an ELF module -> function, source file, line (with inlined frames),
// over elfutils' libdwfl. See symbolizer.cc for the exported JavaScript API.
#pragma once

#include <napi.h>

// Registers on `exports`:
//   symbolize(modulePath, offsets, options?) -> Promise<SymbolizedBatch>
//   readBuildId(path) -> string | null
void InitSymbolizer(Napi::Env env, Napi::Object exports);
