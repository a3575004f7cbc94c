import { stack } from '../helpers/stacks.js';
import { conformance } from './suite.js';

conformance(stack('raw-aligned-slice-over-file-4k'));
