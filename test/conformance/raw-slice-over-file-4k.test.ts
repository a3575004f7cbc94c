import { stack } from '../helpers/stacks.js';
import { conformance } from './suite.js';

conformance(stack('raw-slice-over-file-4k'));
