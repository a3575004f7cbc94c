import type { DriverDef } from '../../../registry/driver.js';
import { stringOption } from '../../../registry/options.js';
import { HttpNode } from './http-node.js';
import { DEFAULT_TIMEOUT, HTTP_OPTIONS, httpOptions } from './options.js';

export { HttpNode };

/**
 * QEMU registers its curl driver once per scheme (`http`, `https`), each claiming URLs of its own
 * scheme only. The timeout is the node's `timeout` option, else the open's network timeout (the
 * CLI's --timeout), else QEMU's default of 5 s. The registry loads this module (and node:http,
 * node:https) on the first http(s) open only.
 */
function curlDriver(scheme: 'http' | 'https'): DriverDef {
  return {
    name: scheme,
    kind: 'protocol',
    protocols: [scheme],
    options: HTTP_OPTIONS,
    async open(spec, ctx) {
      const opts = httpOptions(spec, scheme);
      return HttpNode.open({
        ...opts,
        timeout: opts.timeout ?? ctx.options.networkTimeout ?? DEFAULT_TIMEOUT,
        nodeName: stringOption(spec, 'node-name'),
      });
    },
  };
}

export const httpDriver = curlDriver('http');
export const httpsDriver = curlDriver('https');
