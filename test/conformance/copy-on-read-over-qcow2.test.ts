import { stack } from '../helpers/stacks.js';
import { conformance } from './suite.js';

conformance(stack('copy-on-read-over-qcow2'));
