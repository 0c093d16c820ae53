// How a message names an option: the library's `allocator: { path }` or the CLI's
// `--allocator PATH`, for the surface the user is on. The CLI switches it once, at start.

const library = {
  allocator: (path = 'PATH') => (path === 'PATH' ? 'allocator: { path }' : `allocator: { path: '${path}' }`),
  allocatorSymbols: () => "allocator: { path, symbols: { malloc: 'je_malloc', ... } }",
  maxAllocations: () => 'maxAllocations',
  eventBuffer: () => 'eventBufferBytes',
  cwd: () => 'options.cwd',
};

const cli: typeof library = {
  allocator: (path = 'PATH') => `--allocator ${path}`,
  allocatorSymbols: () => '--allocator PATH --allocator-symbol malloc=je_malloc ...',
  maxAllocations: () => '--max-allocations N',
  eventBuffer: () => '--event-buffer BYTES',
  cwd: () => 'the working directory',
};

let words = library;

/** Messages from here on name the CLI's flags. */
export function useCliWords(): void {
  words = cli;
}

/** The option as the current surface spells it. */
export function optionWord<K extends keyof typeof library>(name: K, ...args: Parameters<(typeof library)[K]>): string {
  return (words[name] as (...a: unknown[]) => string)(...args);
}
