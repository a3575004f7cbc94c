#!/usr/bin/env node
// The command line, bundled by scripts/bundle-cli.mjs (`npm run build`).
import '../dist/bin/dev.js';
