import { NBD_MAX_STRING, NBD_REP_ERR_INVALID } from '../protocol.js';

/** An option the server answers with an error reply; the connection goes on. */
export class OptionError extends Error {
  constructor(readonly reply: number, message: string) {
    super(message);
  }
}

/** The data of NBD_OPT_INFO and NBD_OPT_GO. */
export interface InfoRequest {
  name: string;
  /** NBD_INFO_* codes the client asked for. */
  infos: number[];
}

/** The data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
export interface MetaRequest {
  name: string;
  queries: string[];
}

const invalid = (message: string) => new OptionError(NBD_REP_ERR_INVALID, message);

/** Reads the option data front to back; every length is checked against what is left. */
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
}

export function parseInfoRequest(data: Buffer): InfoRequest {
  const r = new OptionReader(data);
  const name = r.string(r.u32('export name length'), 'export name');
  if (name === undefined) throw invalid(`export name is longer than ${NBD_MAX_STRING} bytes`);
  const count = r.u16('information request count');
  if (r.left !== count * 2) throw invalid(`option data holds ${r.left} bytes for ${count} information requests`);
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(r.u16('information request'));
  return { name, infos };
}

export function parseMetaRequest(data: Buffer): MetaRequest {
  const r = new OptionReader(data);
  const name = r.string(r.u32('export name length'), 'export name');
  if (name === undefined) throw invalid(`export name is longer than ${NBD_MAX_STRING} bytes`);
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
