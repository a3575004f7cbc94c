// Runs the CLI from source (`npx tsx src/cli/dev.ts io ...`), without building dist/.
import { runProcess } from './entry.js';

await runProcess();
