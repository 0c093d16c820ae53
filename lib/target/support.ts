// Can this process trace at all? Checked before loading anything, so the user gets one clear
// reason instead of a verifier log.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { NoBtfError, PermissionError, UprobesUnsupportedError, permissionAdvice } from '../errors.js';

const CAP_SYS_ADMIN = 21n;
const CAP_PERFMON = 38n;
const CAP_BPF = 39n;

/** Effective capability set of this process, from /proc/self/status. */
export function effectiveCapabilities(status = readFileSync('/proc/self/status', 'utf8')): bigint {
  const line = status.split('\n').find((l) => l.startsWith('CapEff:'));
  return line ? BigInt(`0x${line.slice('CapEff:'.length).trim()}`) : 0n;
}

export function hasTracingCapabilities(caps: bigint): boolean {
  const has = (bit: bigint) => (caps & (1n << bit)) !== 0n;
  return has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
}

/** Where sysfs is; EBPF_LEAK_SYSFS moves it (containers that mount the host's elsewhere). */
export function sysfsRoot(): string {
  return process.env.EBPF_LEAK_SYSFS || '/sys';
}

/** The kernel BTF to load against; EBPF_LEAK_BTF_PATH names a BTF file for kernels without one. */
export function btfPath(): { path: string; custom: boolean } {
  const custom = process.env.EBPF_LEAK_BTF_PATH;
  return custom ? { path: custom, custom: true } : { path: join(sysfsRoot(), 'kernel/btf/vmlinux'), custom: false };
}

export function checkSupport(): { btfPath: string | undefined } {
  if (!hasTracingCapabilities(effectiveCapabilities())) {
    throw new PermissionError(
      `ebpf-leak cannot load BPF programs: this process (uid ${process.getuid?.() ?? '?'}) has neither ` +
        `CAP_SYS_ADMIN nor CAP_BPF + CAP_PERFMON. ${permissionAdvice}`,
    );
  }
  const btf = btfPath();
  if (!existsSync(btf.path)) {
    throw new NoBtfError(
      btf.custom
        ? `EBPF_LEAK_BTF_PATH names ${btf.path}, which does not exist. Point it at a BTF file for this kernel.`
        : `this kernel has no BTF (${btf.path} is missing), which the CO-RE BPF program needs. ` +
            'Use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or set EBPF_LEAK_BTF_PATH to a BTF file ' +
            'for this kernel (e.g. from BTFHub).',
    );
  }
  const uprobeType = join(sysfsRoot(), 'bus/event_source/devices/uprobe/type');
  if (!existsSync(uprobeType)) {
    throw new UprobesUnsupportedError(
      `this kernel cannot place uprobes (${uprobeType} is missing). ` +
        'ebpf-leak needs a kernel built with CONFIG_UPROBES=y and CONFIG_UPROBE_EVENTS=y.',
    );
  }
  return { btfPath: btf.custom ? btf.path : undefined };
}
