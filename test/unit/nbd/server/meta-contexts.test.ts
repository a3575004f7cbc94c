import assert from 'node:assert/strict';
import { it } from 'node:test';
import { MemoryNode } from '../../../../src/drivers/protocol/memory/index.js';
import { NbdExport } from '../../../../src/nbd/server/export.js';
import { availableContexts, selectContexts } from '../../../../src/nbd/server/meta-contexts.js';
import type { Extent } from '../../../../src/core/types.js';

const exp = new NbdExport(new MemoryNode({ size: 512 }), { allocationDepth: true });
const names = (list: { name: string }[]) => list.map((c) => c.name);
const ext = (e: Partial<Extent>): Extent => ({ offset: 0, length: 512, data: false, zero: false, present: true, depth: 0, ...e });

it('selects as the spec says: wildcards only in LIST, nothing for no queries in SET', () => {
  assert.deepEqual(names(selectContexts(exp, [], true)), ['base:allocation', 'qemu:allocation-depth']);
  assert.deepEqual(names(selectContexts(exp, [], false)), []);
  assert.deepEqual(names(selectContexts(exp, ['base:'], true)), ['base:allocation']);
  assert.deepEqual(names(selectContexts(exp, ['base:', 'qemu:'], false)), []);
  assert.deepEqual(names(selectContexts(exp, ['qemu:allocation-depth', 'base:allocation', 'base:allocation'], false)), ['base:allocation', 'qemu:allocation-depth']);
  assert.deepEqual(names(selectContexts(new NbdExport(new MemoryNode({ size: 512 })), ['qemu:allocation-depth'], false)), []);
});

it('maps extents to base:allocation and allocation-depth as QEMU does', () => {
  const [base, depth] = availableContexts(exp);
  assert.equal(base!.status(ext({ data: true })), 0);
  assert.equal(base!.status(ext({ zero: true })), 3, 'a zero cluster holds no data: hole and zero');
  assert.equal(base!.status(ext({ data: true, zero: true })), 2);
  assert.equal(base!.status(ext({})), 1);
  assert.equal(depth!.status(ext({ present: true, depth: 0 })), 1);
  assert.equal(depth!.status(ext({ present: true, depth: 2 })), 3);
  assert.equal(depth!.status(ext({ present: false, depth: 2 })), 0);
});
