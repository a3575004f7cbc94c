import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DEFAULT_READAHEAD, httpOptions } from '../../../../../src/drivers/protocol/http/options.js';

describe('http driver options', () => {
  it('takes the URL from url or filename, with QEMU\'s defaults', () => {
    for (const spec of [{ driver: 'http', url: 'http://h/x.img' }, { driver: 'http', filename: 'http://h/x.img' }]) {
      const o = httpOptions(spec, 'http');
      assert.deepEqual([o.text, o.url.href, o.readahead, o.timeout, o.sslverify, o.auth, o.cookie],
        ['http://h/x.img', 'http://h/x.img', DEFAULT_READAHEAD, undefined, true, undefined, undefined]);
    }
    assert.equal(DEFAULT_READAHEAD, 256 * 1024);
  });

  it('refuses what QEMU\'s curl_open refuses, in its words', () => {
    const cases: [Record<string, unknown>, 'http' | 'https', RegExp][] = [
      [{}, 'http', /^curl block driver requires an 'url' option$/],
      [{ url: 'https://h/x' }, 'http', /^http curl driver cannot handle the URL 'https:\/\/h\/x' \(does not start with 'http:\/\/'\)$/],
      [{ url: 'http://h/x' }, 'https', /does not start with 'https:\/\/'/],
      [{ url: 'http://h/x', readahead: 1000 }, 'http', /^HTTP_READAHEAD_SIZE 1000 is not a multiple of 512$/],
      [{ url: 'http://h/x', timeout: 10001 }, 'http', /^timeout parameter is too large or negative$/],
      [{ url: 'http://h/x', timeout: -1 }, 'http', /'timeout' must be a non-negative integer/],
      [{ url: 'http://h/x', sslverify: 'maybe' }, 'http', /'sslverify' must be on or off/],
      [{ url: 'http://h/x', filename: 'http://h/y' }, 'http', /'filename' and 'url' name different URLs/],
      [{ url: 'http://[bad/x' }, 'http', /is not a valid URL/],
      [{ url: 'http://h/x', cookie: 'a=1\r\nHost: evil' }, 'http', /cookie must not contain line breaks/],
      [{ url: 'http://h/x', 'password-secret': 'sec0' }, 'http', /option 'password-secret': secret objects are not supported/],
      [{ url: 'http://h/x', 'proxy-username': 'p' }, 'http', /HTTP proxies are not supported/],
      [{ url: 'http://h/x', readahead: '128M' }, 'http', /readahead 134217728 is larger than/],
    ];
    for (const [spec, scheme, re] of cases) {
      assert.throws(() => httpOptions({ driver: scheme, ...spec }, scheme), (e: Error & { code?: string }) => e.code === 'EINVAL' && re.test(e.message), JSON.stringify(spec));
    }
  });

  it('reads sizes and switches as QEMU\'s option parser does', () => {
    const o = httpOptions({ driver: 'https', url: 'https://h/x', readahead: '64k', timeout: '30', sslverify: 'off', cookie: 'a=1; b=2' }, 'https');
    assert.deepEqual([o.readahead, o.timeout, o.sslverify, o.cookie], [65536, 30, false, 'a=1; b=2']);
    assert.equal(httpOptions({ driver: 'http', url: 'http://h/x', readahead: 0 }, 'http').readahead, 0);
  });

  it('takes credentials from the URL (percent-decoded) and lets the options override them; the URL keeps none', () => {
    const fromUrl = httpOptions({ driver: 'http', url: 'http://us%40r:p%3Ass@h/x' }, 'http');
    assert.deepEqual([fromUrl.auth, fromUrl.url.href, fromUrl.text], ['us@r:p:ss', 'http://h/x', 'http://us%40r:p%3Ass@h/x']);
    const both = httpOptions({ driver: 'http', url: 'http://u:p@h/x', username: 'v', password: 'q' }, 'http');
    assert.equal(both.auth, 'v:q');
    assert.equal(httpOptions({ driver: 'http', url: 'http://h/x', username: 'v' }, 'http').auth, 'v:');
    assert.throws(() => httpOptions({ driver: 'http', url: 'http://h/x', username: 'a:b' }, 'http'), /cannot contain ':'/);
  });
});
