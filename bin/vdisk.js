#!/usr/bin/env node
import { runProcess } from '../dist/cli/entry.js';
await runProcess();
