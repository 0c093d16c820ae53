// Trace a program from its first instruction and print what it leaked.
//
//   npx tsc -p tsconfig.json && sudo node dist-examples/... , or simply, from this repository:
//   sudo node --experimental-strip-types examples/trace-example.ts ./a.out   (Node >= 22.6)
//
// The same with the CLI: sudo npx ebpf-leak run -- ./a.out
import { trace } from 'ebpf-leak';

const [command = './a.out', ...args] = process.argv.slice(2);
const tracer = await trace({ command, args, stdio: 'inherit' });

tracer.on('lost', ({ events, allocations }) => {
  console.error(`lost ${events} events, ${allocations} allocations not tracked`);
});

const report = await tracer.done;
const { inUseBytes, inUseBlocks, allocs, frees } = report.summary;
console.error(`${allocs} allocs, ${frees} frees; ${inUseBytes} bytes in ${inUseBlocks} blocks still allocated`);
for (const leak of report.leaks.slice(0, 5)) {
  const where = leak.stack.find((f) => f.file) ?? leak.stack[0];
  console.error(`  ${leak.bytes} bytes in ${leak.blocks} blocks at ${where?.symbol ?? '?'} (${where?.file ?? '?'}:${where?.line ?? '?'})`);
}
process.exitCode = report.leaks.length > 0 ? 1 : 0;
