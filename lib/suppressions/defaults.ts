// The suppressions applied unless `defaultSuppressions: false`: allocations that glibc, the
// dynamic loader, libstdc++, libuv and V8 make once (or keep as caches) and never free, which
// every program "leaks" and no test should fail for. valgrind's own default suppressions cover
// much the same ground (it hides "still reachable" blocks by default). Where a scan of the target
// sorts blocks into leak kinds, still-reachable blocks are no leaks anyway; a rule for what is
// always reachable (a stdio buffer, held by its FILE) says `match-leak-kinds: reachable`, so a
// lost one is reported. Without a scan (in-process checks, a program killed by a signal) every
// rule applies as written.
//
// Written in valgrind's format and parsed like a user's file; a report names them with source
// `default`. Patterns use demangled names (ebpf-leak's stacks are demangled). Each rule is as
// narrow as its stack allows: the allocation function and its one-time caller, or "anywhere
// under" (a leading `...`) a function that only ever allocates caches.
import { parseSuppressions, type SuppressionRule } from './rules.js';

export const defaultSuppressionsText = `
# Rules are tried in order and the first match names the suppression: narrow ones first.
# ---- glibc
{
   glibc-stdio-buffer
   Memcheck:Leak
   match-leak-kinds: reachable
   fun:malloc
   fun:*_IO_file_doallocate
}
{
   glibc-locale
   Memcheck:Leak
   ...
   fun:_nl_*
}
{
   glibc-setlocale
   Memcheck:Leak
   ...
   fun:setlocale
}
{
   glibc-nss
   Memcheck:Leak
   ...
   fun:__nss_*
}
{
   glibc-nss-modules
   Memcheck:Leak
   ...
   fun:nss_*
}
{
   glibc-tzfile
   Memcheck:Leak
   ...
   fun:__tzfile_read
}
{
   glibc-tzset
   Memcheck:Leak
   ...
   fun:tzset_internal
}
{
   glibc-atexit-handlers
   Memcheck:Leak
   fun:*alloc
   fun:__new_exitfn
}
{
   glibc-thread-local-destructors
   Memcheck:Leak
   fun:*alloc
   fun:__cxa_thread_atexit_impl
}
# A static executable does at start-up what ld.so does for a dynamic one.
{
   glibc-static-startup
   Memcheck:Leak
   ...
   fun:_dl_non_dynamic_init
}
# ---- the dynamic loader: link maps of loaded libraries, TLS blocks, dl_find_object tables
{
   ld.so-dl-find-object
   Memcheck:Leak
   fun:malloc
   ...
   fun:_dlfo_mappings_segment_allocate
}
{
   ld.so-allocations
   Memcheck:Leak
   fun:*alloc
   obj:*/ld-linux*.so*
}
# ---- libstdc++
{
   libstdc++-emergency-exception-pool
   Memcheck:Leak
   fun:malloc
   fun:*::pool::pool*
}
# The same pool linked into a static executable, made by the file's static initialiser.
{
   libstdc++-emergency-exception-pool-static
   Memcheck:Leak
   fun:malloc
   fun:_GLOBAL__sub_I_eh_alloc.cc
}
# The same pool when libstdc++ has no symbols for it (Debian's): malloc called by libstdc++ code
# that the dynamic loader runs as a static initialiser. Not "any malloc from libstdc++": that is
# every operator new of every C++ program.
{
   libstdc++-static-init
   Memcheck:Leak
   fun:malloc
   obj:*/libstdc++.so*
   obj:*/ld-linux*.so*
}
{
   libstdc++-locale-init
   Memcheck:Leak
   ...
   fun:std::locale::*
}
# ---- libuv (inside node, or libuv.so.1)
{
   libuv-io-watchers
   Memcheck:Leak
   ...
   fun:maybe_resize
}
{
   libuv-threadpool-init
   Memcheck:Leak
   ...
   fun:init_threads
}
{
   libuv-loop-init
   Memcheck:Leak
   ...
   fun:uv_loop_init
}
# ---- V8: per-isolate caches and GC bookkeeping that grow with the heap, not with native code
{
   v8-zone-memory
   Memcheck:Leak
   ...
   fun:v8::internal::AccountingAllocator::AllocateSegment*
}
{
   v8-handle-blocks
   Memcheck:Leak
   ...
   fun:v8::internal::HandleScope::Extend*
}
{
   v8-global-handle-blocks
   Memcheck:Leak
   ...
   fun:v8::internal::GlobalHandles::NodeSpace*
}
{
   v8-gc-slot-sets
   Memcheck:Leak
   ...
   fun:v8::internal::*SlotSet*
}
{
   v8-gc-memory-chunks
   Memcheck:Leak
   ...
   fun:v8::internal::MemoryChunk::*
}
{
   v8-microtask-queue
   Memcheck:Leak
   ...
   fun:v8::internal::MicrotaskQueue::ResizeBuffer*
}
{
   v8-external-pointer-table
   Memcheck:Leak
   ...
   fun:v8::internal::ExternalPointerTable::*
}
{
   v8-isolate-setup
   Memcheck:Leak
   ...
   fun:v8::internal::Isolate::Init*
}
`;

let parsed: SuppressionRule[] | undefined;

/** The shipped rules (parsed once). */
export function defaultSuppressions(): readonly SuppressionRule[] {
  parsed ??= parseSuppressions(defaultSuppressionsText, { format: 'valgrind', source: 'default' }).map((r) => ({
    ...r,
    source: 'default',
  }));
  return parsed;
}
