#!/usr/bin/env node
// The ebpf-leak command line: `run`, `attach`, `help`, `--version`.
//
// The tracer is imported lazily, when a command actually traces, so `--help` works (and these
// modules can be imported by tests) without the native addon.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { parseCliArgs } from './args.js';
import { attachCommand } from './attach.js';
import { formatUsageError, helpText } from './help.js';
import { CliFailure, defaultIo, packageVersion, type CliIo } from './output.js';
import { runCommand } from './run.js';

async function isEbpfLeakError(err: unknown): Promise<boolean> {
  try {
    const { EbpfLeakError } = await import('../errors.js');
    return err instanceof EbpfLeakError;
  } catch {
    const code = (err as { code?: unknown } | null)?.code;
    return err instanceof Error && typeof code === 'string' && code.startsWith('ELEAK_');
  }
}

/** Runs the CLI; resolves to the exit status. Never rejects. */
export async function main(argv: readonly string[], io: CliIo = defaultIo()): Promise<number> {
  const cmd = parseCliArgs(argv);
  try {
    switch (cmd.kind) {
      case 'usage-error':
        io.stderr.write(formatUsageError(cmd));
        return 2;
      case 'help':
        io.stdout.write(helpText(cmd.topic));
        return 0;
      case 'version':
        io.stdout.write(`ebpf-leak ${packageVersion()}\n`);
        return 0;
      case 'run':
        return await runCommand(cmd, io);
      case 'attach':
        return await attachCommand(cmd, io);
    }
  } catch (err) {
    if (err instanceof CliFailure || (await isEbpfLeakError(err))) {
      io.stderr.write(`ebpf-leak: ${(err as Error).message}\n`);
    } else {
      const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
      io.stderr.write(`ebpf-leak: internal error (please report it): ${text}\n`);
    }
    return 2;
  }
}

function invokedDirectly(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (invokedDirectly()) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    () => process.exit(2),
  );
}
