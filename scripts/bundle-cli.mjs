// Bundles the command line (dist/cli/dev.js and everything it imports) into dist/bin/.
//
// Why: a vdisk command is often short (info, map, a convert of a few hundred megabytes), and
// qemu-img starts in 10 ms. Node resolving, reading and compiling ~90 separate modules cost
// ~30 ms of every command; one bundle compiles in a third of that. Dynamic imports stay separate
// chunks (--splitting), so the lazily loaded drivers and filters still load only when used.
// The library (dist/index.js) stays tsc's output, module per file.
//
// The chunks sit two levels under the package root like dist/native/index.js, so the addon's
// relative path (../../build/Release) still resolves; and dev.js keeps its name because
// `vdisk serve --fork` starts `./dev.js` beside the running module again.
import { rmSync } from 'node:fs';
import { build } from 'esbuild';

// Chunk names carry content hashes: clear the last build's so stale chunks do not pile up.
rmSync('dist/bin', { recursive: true, force: true });

await build({
  entryPoints: ['dist/cli/dev.js'],
  outdir: 'dist/bin',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // The addon is loaded with require() at run time; zstd-wasm is resolved by path for a worker.
  external: ['*.node', '@bokuweb/zstd-wasm'],
  logLevel: 'warning',
});
