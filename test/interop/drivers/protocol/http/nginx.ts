import { mkdir, readFile, writeFile } from 'node:fs/promises';
import type { TmpDir } from '../../../../helpers/tmp.js';
import { freePort, start } from '../../nbd/servers.js';

/** nginx serving `<tmp>/www` on loopback, as a real HTTP(S) server for the http driver's tests. */
export interface Nginx {
  /** `http://127.0.0.1:PORT` (and `https://…` when started with a certificate). */
  readonly http: string;
  readonly https?: string;
  /** The directory served. */
  readonly root: string;
  /** The access log's lines so far: `METHOD URI STATUS CONNECTION RANGE`. */
  accessLog(): Promise<string[]>;
  stop(): Promise<void>;
}

/**
 * Starts nginx in the foreground with a config of its own under `tmp` (no system files touched).
 * `/norange/` serves without byte ranges (max_ranges 0); `/moved/X` redirects permanently to `/X`.
 */
export async function startNginx(tmp: TmpDir, tls?: { cert: string; key: string }): Promise<Nginx> {
  const prefix = tmp.path('nginx');
  const root = tmp.path('www');
  await mkdir(`${prefix}/tmp`, { recursive: true });
  await mkdir(`${root}/norange`, { recursive: true });
  const port = await freePort();
  const tlsPort = tls ? await freePort() : 0;
  const conf = `daemon off;
master_process off;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log stderr error;
events { worker_connections 256; }
http {
  log_format probe '$request_method $uri $status $connection "$http_range"';
  access_log ${prefix}/access.log probe;
  client_body_temp_path ${prefix}/tmp;
  proxy_temp_path ${prefix}/tmp;
  fastcgi_temp_path ${prefix}/tmp;
  uwsgi_temp_path ${prefix}/tmp;
  scgi_temp_path ${prefix}/tmp;
  types { }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${port};
    ${tls ? `listen 127.0.0.1:${tlsPort} ssl; ssl_certificate ${tls.cert}; ssl_certificate_key ${tls.key};` : ''}
    root ${root};
    location /norange/ { max_ranges 0; }
    location /moved/ { rewrite ^/moved/(.*)$ /$1 permanent; }
  }
}
`;
  await writeFile(`${prefix}/nginx.conf`, conf);
  await writeFile(`${prefix}/access.log`, '');
  // Waits on the last port listed: nginx opens its listeners in order.
  const server = await start('nginx', ['-p', prefix, '-c', `${prefix}/nginx.conf`, '-e', 'stderr'], '', `http://127.0.0.1:${port}`, tls ? tlsPort : port);
  return {
    http: `http://127.0.0.1:${port}`,
    https: tls ? `https://127.0.0.1:${tlsPort}` : undefined,
    root,
    accessLog: async () => (await readFile(`${prefix}/access.log`, 'utf8')).split('\n').filter(Boolean),
    stop: () => server.stop(),
  };
}
