import { stack } from '../helpers/stacks.js';
import { conformance } from './suite.js';

conformance(stack('filter-over-raw-file-4k'));
