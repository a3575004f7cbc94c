/**
 * The conformance suite (DESIGN.md §11): one set of expectations that every stack must meet,
 * parameterised by what the stack says it can do.
 */
import { describe } from 'node:test';
import { skipReason, type Stack } from '../helpers/stacks.js';
import { blockStatusCases } from './cases/block-status.js';
import { boundsCases } from './cases/bounds.js';
import { discardCases } from './cases/discard.js';
import { flushCases } from './cases/flush-fua.js';
import { lifecycleCases } from './cases/lifecycle.js';
import { unalignedCases } from './cases/unaligned.js';
import { zeroCases } from './cases/zeroes.js';

export function conformance(stack: Stack): void {
  describe(`conformance: ${stack.name}`, { skip: skipReason(stack) }, () => {
    boundsCases(stack);
    unalignedCases(stack);
    zeroCases(stack);
    discardCases(stack);
    flushCases(stack);
    blockStatusCases(stack);
    lifecycleCases(stack);
  });
}
