// The suppressions applied unless `defaultSuppressions: false`, in two sets.
//
// With a scan of the target (the default for a program ebpf-leak starts), reachability explains
// what the C library, the loader and the C++ runtime keep: glibc's stdio buffers, its locale, NSS
// and time zone data, the loader's link maps, libstdc++'s emergency pool are all held by globals,
// so they are "still reachable" and no leak. Measured on ls, sort, python3, git, a C++ program
// using iostream, node and the fixtures: every block the shipped rules used to hide there is still
// reachable, except the few the first set names, which the scan (and valgrind) call lost although
// the runtime holds them. Those rules never cover a still reachable group.
//
// Without a scan (`--no-leak-kinds`, sampling, `attach` without `--scan`, and the in-process
// `measure()` and matchers) every block still allocated counts, so the second set names what
// glibc, the dynamic loader, libstdc++, libuv and V8 make once (or keep as caches) and never
// free; those rules apply only to groups without a kind.
//
// Written in valgrind's format and parsed like a user's file; a report names them with source
// `default`. Patterns use demangled names (ebpf-leak's stacks are demangled). Each rule is as
// narrow as its stack allows: the allocation function and its one-time caller, or "anywhere
// under" (a leading `...`) a function that only ever allocates caches.
import { parseSuppressions, type SuppressionRule } from './rules.js';

/** The rules that hold with a scan too: what it calls lost although the runtime holds it. */
const withScanText = `
# Rules are tried in order and the first match names the suppression: narrow ones first.
# A thread's DTV: its descriptor keeps a pointer to the vector's second slot, so a thread alive at
# the exit leaves a possibly lost block (valgrind says so too), which its thread still uses.
{
   ld.so-thread-dtv
   Memcheck:Leak
   match-leak-kinds: possible
   fun:calloc
   ...
   fun:allocate_dtv
}
# dlopen()'s table for _dl_find_object(): the loader keeps only an aligned pointer into its
# segment, so it is possibly lost (valgrind says so too) while the loader uses it.
{
   ld.so-dl-find-object
   Memcheck:Leak
   match-leak-kinds: possible
   fun:malloc
   ...
   fun:_dlfo_mappings_segment_allocate
}
# A static executable does at start-up what ld.so does for a dynamic one; the scan finds no
# pointer to what _dl_find_object_init and _dl_init_paths allocate there (definitely lost).
{
   glibc-static-startup
   Memcheck:Leak
   match-leak-kinds: definite,indirect,possible
   ...
   fun:_dl_non_dynamic_init
}
`;

/** The rules for reports without kinds: each block here is still reachable when scanned. */
const withoutScanText = `
# ---- glibc
{
   glibc-stdio-buffer
   Memcheck:Leak
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
# ---- the dynamic loader: link maps of loaded libraries, TLS blocks
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

/** The shipped rules' text: those that hold with a scan, then those for reports without one. */
export const defaultSuppressionsText = withScanText + withoutScanText;

let parsed: SuppressionRule[] | undefined;

/** The shipped rules (parsed once). */
export function defaultSuppressions(): readonly SuppressionRule[] {
  const parse = (text: string, unscannedOnly: boolean) =>
    parseSuppressions(text, { format: 'valgrind', source: 'default' }).map((r) => ({
      ...r,
      source: 'default',
      ...(unscannedOnly ? { unscannedOnly } : {}),
    }));
  parsed ??= [...parse(withScanText, false), ...parse(withoutScanText, true)];
  return parsed;
}
