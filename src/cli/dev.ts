// Runs the CLI from source (`npx tsx src/cli/dev.ts io ...`), without building dist/.
import { main } from './main.js';

process.exitCode = await main(process.argv.slice(2));
