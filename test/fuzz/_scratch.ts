import { Worker, isMainThread, parentPort } from 'node:worker_threads';
const x: number = 1;
if (isMainThread) {
  const api = import.meta.resolve('tsx/esm/api');
  const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`;
  const w = new Worker(code, { eval: true, resourceLimits: { maxOldGenerationSizeMb: 512 } });
  w.on('message', (m) => { console.log('got', m); });
  w.on('error', (e) => console.log('err', e));
  w.on('exit', (c) => console.log('exit', c));
  setTimeout(() => { w.postMessage('loop'); }, 1000);
  setTimeout(() => { console.log('terminating'); w.terminate().then(c => console.log('terminated', c)); }, 2500);
} else {
  parentPort!.on('message', (m) => { if (m === 'loop') { parentPort!.postMessage('looping'); for(;;){} } });
  parentPort!.postMessage('hi ' + x);
}
