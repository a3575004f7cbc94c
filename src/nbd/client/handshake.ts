import type { Duplex } from 'node:stream';
import { BlockError, type BlockErrorCode } from '../../core/errors.js';
import {
  decodeExportNameReply, decodeInfoReply, decodeMetaContextReply, decodeOptionReplyHeader, encodeClientFlags,
  encodeInfoRequest, encodeMetaRequest, encodeOption, exportNameReplySize, greetingFlags, greetingStyle, MAX_PAYLOAD,
  NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT, NBD_MAX_STRING, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NBD_REP_ERR_BLOCK_SIZE_REQD, NBD_REP_ERR_POLICY, NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_FLAG_ERROR, NBD_REP_INFO, NBD_REP_META_CONTEXT,
  GREETING_SIZE, OPTION_NAMES, OPTION_REPLY_HEADER_SIZE, type BlockSizeInfo,
} from '../protocol.js';
import { ByteReader } from './byte-reader.js';

/** No option reply the client asks for is this long; a longer one is a broken or hostile server. */
const MAX_OPTION_REPLY = NBD_MAX_STRING + 64;
/** Defaults the spec gives a client that learned no block sizes (portable: 512-byte aligned, 32 MiB). */
const DEFAULT_SIZES: BlockSizeInfo = { minimum: 1, preferred: 4096, maximum: MAX_PAYLOAD };

/** The socket and its reader; STARTTLS replaces both. */
export interface Wire {
  socket: Duplex;
  reader: ByteReader;
}

export interface HandshakeOptions {
  exportName: string;
  /** Meta contexts to select (SET_META_CONTEXT); the server ignores those it does not have. */
  metaContexts: readonly string[];
  /** Turns the plain socket into a TLS one after NBD_OPT_STARTTLS was acknowledged. */
  startTls?: (socket: Duplex) => Promise<Duplex>;
  /** Names the server in errors ("nbd://host/export"). */
  describe: string;
}

/** What the handshake learned: the export and how to talk to it. */
export interface ExportInfo {
  size: number;
  /** Transmission flags (NBD_FLAG_*). */
  flags: number;
  blockSizes: BlockSizeInfo;
  structuredReplies: boolean;
  /** Selected meta contexts: id → name. */
  contexts: Map<number, string>;
  tls: boolean;
}

interface OptionReply {
  type: number;
  data: Buffer;
}

/** A protocol violation or refusal during the handshake: the connection is unusable. */
function fail(code: BlockErrorCode, describe: string, what: string): BlockError {
  return new BlockError(code, `${describe}: ${what}`, { op: 'open', path: describe });
}

/**
 * Fixed-newstyle negotiation as the client (specs/nbd.md §2): STARTTLS when asked, structured
 * replies, meta contexts, then GO with NBD_INFO_BLOCK_SIZE — or NBD_OPT_EXPORT_NAME when the server
 * predates GO. Resolves once the connection is in the transmission phase.
 */
export async function negotiate(wire: Wire, opts: HandshakeOptions): Promise<ExportInfo> {
  const { describe } = opts;
  // The magics first: an oldstyle or foreign server is named before anything more is read.
  const greeting = Buffer.alloc(GREETING_SIZE);
  await wire.reader.readInto(greeting.subarray(0, 16));
  switch (greetingStyle(greeting)) {
    case 'not-nbd': throw fail('EIO', describe, 'this is not an NBD server (bad greeting magic)');
    case 'oldstyle': throw fail('ENOTSUP', describe, 'the server speaks the obsolete oldstyle protocol');
    case 'bad-newstyle-magic': throw fail('EIO', describe, 'bad newstyle magic in the server greeting');
  }
  await wire.reader.readInto(greeting.subarray(16));
  const serverFlags = greetingFlags(greeting);
  const fixed = (serverFlags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (serverFlags & NBD_FLAG_NO_ZEROES) !== 0;
  wire.socket.write(encodeClientFlags((fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));

  const info: ExportInfo = {
    size: 0, flags: 0, blockSizes: DEFAULT_SIZES, structuredReplies: false, contexts: new Map(), tls: false,
  };
  // Plain newstyle servers understand NBD_OPT_EXPORT_NAME only, and TLS needs fixed newstyle.
  if (!fixed) {
    if (opts.startTls) throw fail('ENOTSUP', describe, 'TLS was requested but the server does not speak fixed newstyle');
    return exportName(wire, opts, info, noZeroes);
  }

  const send = (option: number, payload?: Buffer): void => void wire.socket.write(encodeOption(option, payload));
  const ask = async (option: number): Promise<OptionReply> => {
    send(option);
    return readOptionReply(wire.reader, option, describe);
  };

  if (opts.startTls) {
    const r = await ask(NBD_OPT_STARTTLS);
    if (r.type !== NBD_REP_ACK) throw refusal(r, NBD_OPT_STARTTLS, describe);
    if (wire.reader.pendingBytes > 0) throw fail('EIO', describe, 'the server sent plaintext after agreeing to STARTTLS');
    wire.reader.detach();
    wire.socket = await opts.startTls(wire.socket);
    wire.reader = new ByteReader(wire.socket, () => fail('EIO', describe, 'the server closed the connection during the TLS handshake'));
    info.tls = true;
  }

  const sr = await ask(NBD_OPT_STRUCTURED_REPLY);
  if (sr.type === NBD_REP_ACK) info.structuredReplies = true;
  else if (!(sr.type & NBD_REP_FLAG_ERROR)) throw fail('EIO', describe, `unexpected reply type ${sr.type} to NBD_OPT_STRUCTURED_REPLY`);

  // Block status needs structured replies; without them no context can be used.
  if (info.structuredReplies && opts.metaContexts.length > 0) {
    send(NBD_OPT_SET_META_CONTEXT, encodeMetaRequest(opts.exportName, opts.metaContexts));
    for (;;) {
      const r = await readOptionReply(wire.reader, NBD_OPT_SET_META_CONTEXT, describe);
      if (r.type === NBD_REP_ACK) break;
      // A server without meta contexts refuses the option; the export is still usable.
      if (r.type & NBD_REP_FLAG_ERROR) {
        info.contexts.clear();
        break;
      }
      const ctx = r.type === NBD_REP_META_CONTEXT ? decodeMetaContextReply(r.data) : 'malformed NBD_REP_META_CONTEXT reply';
      if (typeof ctx === 'string') throw fail('EIO', describe, ctx);
      if (!opts.metaContexts.includes(ctx.name)) throw fail('EIO', describe, `the server selected meta context '${ctx.name}', which was not asked for`);
      info.contexts.set(ctx.id, ctx.name);
    }
  }

  send(NBD_OPT_GO, encodeInfoRequest(opts.exportName, [NBD_INFO_BLOCK_SIZE]));
  let sawExport = false;
  let sizes: BlockSizeInfo | undefined;
  for (;;) {
    const r = await readOptionReply(wire.reader, NBD_OPT_GO, describe);
    if (r.type === NBD_REP_ACK) break;
    if (r.type === NBD_REP_ERR_UNSUP) {
      // A server from before NBD_OPT_GO: the old way, which cannot report errors.
      return exportName(wire, opts, info, noZeroes);
    }
    if (r.type & NBD_REP_FLAG_ERROR) throw refusal(r, NBD_OPT_GO, describe, opts.exportName);
    if (r.type !== NBD_REP_INFO) throw fail('EIO', describe, `unexpected reply type ${r.type} to NBD_OPT_GO`);
    const body = decodeInfoReply(r.data);
    if (typeof body === 'string') throw fail('EIO', describe, `the server sent ${body}`);
    if (body.type === NBD_INFO_EXPORT) {
      setExport(info, body.size, body.flags, describe);
      sawExport = true;
    } else if (body.type === NBD_INFO_BLOCK_SIZE) sizes = body.sizes;
  }
  if (!sawExport) throw fail('EIO', describe, 'the server accepted NBD_OPT_GO without sending NBD_INFO_EXPORT');
  if (sizes) info.blockSizes = sizes;
  return info;
}

function setExport(info: ExportInfo, size: bigint, flags: number, describe: string): void {
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw fail('ERANGE', describe, `the export size ${size} is larger than vdisk can address`);
  info.size = Number(size);
  info.flags = flags;
}

/** NBD_OPT_EXPORT_NAME: no option reply; the server answers with the export or hangs up. */
async function exportName(wire: Wire, opts: HandshakeOptions, info: ExportInfo, noZeroes: boolean): Promise<ExportInfo> {
  wire.socket.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from(opts.exportName, 'utf8')));
  let reply: Buffer;
  try {
    reply = await wire.reader.read(exportNameReplySize(noZeroes));
  } catch (err) {
    throw new BlockError('ENOENT', `${opts.describe}: the server closed the connection: no export named '${opts.exportName}'?`,
      { op: 'open', path: opts.describe }, { cause: err });
  }
  const { size, flags } = decodeExportNameReply(reply);
  setExport(info, size, flags, opts.describe);
  // Before GO there was no way to learn block sizes: the spec's portable defaults apply.
  info.blockSizes = DEFAULT_SIZES;
  return info;
}

async function readOptionReply(reader: ByteReader, option: number, describe: string): Promise<OptionReply> {
  const h = decodeOptionReplyHeader(await reader.read(OPTION_REPLY_HEADER_SIZE));
  if (!h) throw fail('EIO', describe, 'bad option reply magic');
  if (h.option !== option) throw fail('EIO', describe, `the server answered option ${h.option} instead of ${OPTION_NAMES[option]}`);
  const { type, length } = h;
  if (length > MAX_OPTION_REPLY) throw fail('EIO', describe, `an option reply of ${length} bytes (the limit is ${MAX_OPTION_REPLY})`);
  return { type, data: await reader.read(length) };
}

/** The BlockError for an error reply, with the server's message when it sent one. */
function refusal(r: OptionReply, option: number, describe: string, exportName?: string): BlockError {
  const said = r.data.length > 0 ? `: ${r.data.toString('utf8').replace(/\s+/g, ' ').slice(0, 512)}` : '';
  const name = OPTION_NAMES[option] ?? `option ${option}`;
  switch (r.type) {
    case NBD_REP_ERR_UNKNOWN:
      return fail('ENOENT', describe, `the server has no export named '${exportName ?? ''}'${said}`);
    case NBD_REP_ERR_TLS_REQD:
      return fail('EACCES', describe, `the server requires TLS${said}`);
    case NBD_REP_ERR_POLICY:
      return fail('EPERM', describe, `the server refused ${name} by policy${said}`);
    case NBD_REP_ERR_SHUTDOWN:
      return fail('ESHUTDOWN', describe, `the server is shutting down${said}`);
    case NBD_REP_ERR_UNSUP:
      return fail('ENOTSUP', describe, `the server does not support ${name}${said}`);
    case NBD_REP_ERR_BLOCK_SIZE_REQD:
      return fail('EIO', describe, `the server insists on block sizes it was asked for${said}`);
    default:
      return fail('EIO', describe, `the server refused ${name} (error 0x${r.type.toString(16)})${said}`);
  }
}
