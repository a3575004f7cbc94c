import { NBD_MAX_STRING, NBD_REP_ERR_INVALID } from './constants.js';

/*
 * What the client's options carry (spec §2.4–2.6): the client encodes, the server decodes. The
 * decoders read front to back and check every length against what is left, so hostile data
 * never makes them allocate more than the option holds.
 */

/** An option the server answers with an error reply (type and message); the connection goes on. */
export class OptionError extends Error {
  constructor(readonly reply: number, message: string) {
    super(message);
  }
}

const invalid = (message: string) => new OptionError(NBD_REP_ERR_INVALID, message);

function stringBytes(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > NBD_MAX_STRING) throw new RangeError(`${what} is longer than ${NBD_MAX_STRING} bytes`);
  return b;
}

/** Reads option data front to back; every length is checked against what is left. */
class OptionReader {
  private at = 0;
  constructor(private readonly data: Buffer) {}

  get left(): number {
    return this.data.length - this.at;
  }

  u16(what: string): number {
    if (this.left < 2) throw invalid(`option data ends inside the ${what}`);
    const v = this.data.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }

  u32(what: string): number {
    if (this.left < 4) throw invalid(`option data ends inside the ${what}`);
    const v = this.data.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }

  /** A string of `length` bytes; undefined (skipped) when longer than the spec allows. */
  string(length: number, what: string): string | undefined {
    if (length > this.left) throw invalid(`the ${what} runs past the end of the option data`);
    const bytes = this.data.subarray(this.at, this.at + length);
    this.at += length;
    if (length > NBD_MAX_STRING) return undefined;
    return bytes.toString('utf8');
  }

  exportName(): string {
    const name = this.string(this.u32('export name length'), 'export name');
    if (name === undefined) throw invalid(`export name is longer than ${NBD_MAX_STRING} bytes`);
    return name;
  }
}

// ---- NBD_OPT_INFO, NBD_OPT_GO ----------------------------------------------------------------

export interface InfoRequest {
  name: string;
  /** NBD_INFO_* codes the client asks for. */
  infos: number[];
}

/** u32 name length, name, u16 count, count × u16 information type. */
export function encodeInfoRequest(exportName: string, infos: readonly number[]): Buffer {
  const name = stringBytes(exportName, 'The export name');
  const b = Buffer.alloc(4 + name.length + 2 + 2 * infos.length);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + name.length);
  infos.forEach((info, i) => b.writeUInt16BE(info, 6 + name.length + 2 * i));
  return b;
}

export function decodeInfoRequest(data: Buffer): InfoRequest {
  const r = new OptionReader(data);
  const name = r.exportName();
  const count = r.u16('information request count');
  if (r.left !== count * 2) throw invalid(`option data holds ${r.left} bytes for ${count} information requests`);
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(r.u16('information request'));
  return { name, infos };
}

// ---- NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT ---------------------------------------

export interface MetaRequest {
  name: string;
  queries: string[];
}

/** u32 name length, name, u32 count, count × (u32 length, query). */
export function encodeMetaRequest(exportName: string, queries: readonly string[]): Buffer {
  const parts = [stringBytes(exportName, 'The export name'), ...queries.map((q) => stringBytes(q, 'A meta context query'))];
  const b = Buffer.alloc(4 + parts.reduce((n, p) => n + 4 + p.length, 0));
  let at = 0;
  const put = (p: Buffer): void => {
    b.writeUInt32BE(p.length, at);
    p.copy(b, at + 4);
    at += 4 + p.length;
  };
  put(parts[0]!);
  b.writeUInt32BE(queries.length, at);
  at += 4;
  for (const q of parts.slice(1)) put(q);
  return b;
}

export function decodeMetaRequest(data: Buffer): MetaRequest {
  const r = new OptionReader(data);
  const name = r.exportName();
  const count = r.u32('query count');
  // Each query takes at least its 4-byte length: a count the data cannot hold is malformed.
  if (count > r.left / 4) throw invalid(`option data is too short for ${count} queries`);
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    const query = r.string(r.u32('query length'), 'query');
    // An overlong query can name no context: skipped, as unknown queries are.
    if (query !== undefined) queries.push(query);
  }
  if (r.left !== 0) throw invalid(`${r.left} bytes follow the last query`);
  return { name, queries };
}
