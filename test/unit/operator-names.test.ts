// The operators' mangled names, twice: lib/probes/plan.ts maps each to what it allocates or
// releases, lib/target/cxx-operators.ts looks for them below the probes' layer. They must be the same.
import { describe, expect, it } from 'vitest';
import { cxxOperatorSymbols } from '../../lib/probes/plan.js';
import { cxxOperatorNames } from '../../lib/target/cxx-operators.js';

describe('C++ operator names', () => {
  it('are the same 20 in the plan and in the resolver', () => {
    expect([...cxxOperatorNames].sort()).toEqual(cxxOperatorSymbols.map(([symbol]) => symbol).sort());
    expect(cxxOperatorNames).toHaveLength(20);
  });
});
