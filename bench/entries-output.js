// Reads what bench/entries.c prints for a traced run: per BPF program, its run count and mean ns
// per run (`NAME runs N ns/run X`, one line per instance; the busiest instance is the one used).

/** The busiest instance of program `name`: { runs, ns }, or { runs: 0, ns: NaN } if none ran. */
export function programRuns(out, name) {
  return (
    [...out.matchAll(new RegExp(`^${name} runs (\\d+) ns/run ([\\d.]+)$`, 'gm'))]
      .map((m) => ({ runs: Number(m[1]), ns: Number(m[2]) }))
      .sort((a, b) => b.runs - a.runs)[0] ?? { runs: 0, ns: NaN }
  );
}
