import {
  decodeClientFlags, decodeInfoRequest, decodeMetaRequest, decodeOptionHeader, encodeExportNameReply, encodeGreeting,
  encodeInfoBlockSize, encodeInfoExport, encodeInfoString, encodeMetaContextReply, encodeOptionError,
  encodeOptionReply, encodeServerReply, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES, NBD_INFO_DESCRIPTION, NBD_INFO_NAME, NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO,
  NBD_OPT_LIST, NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK, NBD_REP_ERR_INVALID, NBD_REP_ERR_POLICY, NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_TOO_BIG, NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP, NBD_REP_INFO, NBD_REP_META_CONTEXT, NBD_REP_SERVER, OPTION_HEADER_SIZE, OPTION_NAMES, OptionError,
} from '../protocol.js';
import type { Session } from './commands.js';
import type { NbdExport } from './export.js';
import { selectContexts, type MetaContext } from './meta-contexts.js';

/** What negotiation needs from a connection. */
export interface HandshakeIo {
  /** Exactly `n` more bytes from the client. */
  read(n: number): Promise<Buffer>;
  send(data: Buffer): void;
  /** True when the server has TLS credentials: TLS is then required (QEMU's and nbdkit's FORCEDTLS). */
  readonly tlsConfigured: boolean;
  readonly tlsActive: boolean;
  /** Runs the TLS handshake on the connection; rejects when it fails. */
  startTls(): Promise<void>;
}

export interface HandshakeHost {
  findExport(name: string): NbdExport | undefined;
  listExports(): readonly NbdExport[];
  /** Whether CAN_MULTI_CONN may be advertised (the server lets a client open several connections). */
  readonly multiConn: boolean;
}

/** The client broke the protocol, or asked for something only a hard disconnect can answer. */
export class ProtocolError extends Error {}

/** Options one connection may send before it must choose an export (nbdkit allows 32). */
export const MAX_OPTIONS = 256;
/**
 * Longest option data read into memory. The largest legitimate option (GO naming a 4 KiB export
 * name, SET_META_CONTEXT with a few queries) is far below it; longer ones (a hostile length near
 * 4 GiB) get NBD_REP_ERR_TOO_BIG and the connection is dropped rather than read to the end.
 */
export const MAX_OPTION_LENGTH = 64 * 1024;

/** Negotiation state that STARTTLS resets. */
interface State {
  structured: boolean;
  /** The last SET_META_CONTEXT: for which export, and what it selected. */
  meta?: { name: string; contexts: MetaContext[] };
}

/**
 * Fixed-newstyle negotiation (specs/nbd.md §2): answers options until the client picks an
 * export (GO or EXPORT_NAME) and returns the session, or returns undefined after ABORT. A
 * protocol violation throws ProtocolError: the caller drops the connection.
 */
export async function negotiate(io: HandshakeIo, host: HandshakeHost): Promise<Session | undefined> {
  io.send(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  const clientFlags = decodeClientFlags(await io.read(4));
  if (clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
    throw new ProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
  }
  const fixed = (clientFlags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;
  let state: State = { structured: false };

  for (let count = 1; ; count++) {
    const header = decodeOptionHeader(await io.read(OPTION_HEADER_SIZE));
    if (!header) throw new ProtocolError('bad option magic');
    const { option, length } = header;
    const name = OPTION_NAMES[option] ?? `option ${option}`;
    // Without fixed newstyle a server cannot answer an option it refuses, only hang up.
    if (!fixed && option !== NBD_OPT_EXPORT_NAME) throw new ProtocolError(`${name} from a client without fixed newstyle`);
    if (count > MAX_OPTIONS) {
      io.send(encodeOptionError(option, NBD_REP_ERR_TOO_BIG, `more than ${MAX_OPTIONS} options`));
      throw new ProtocolError(`more than ${MAX_OPTIONS} options`);
    }
    if (length > MAX_OPTION_LENGTH) {
      if (option !== NBD_OPT_EXPORT_NAME) io.send(encodeOptionError(option, NBD_REP_ERR_TOO_BIG, `${name} data of ${length} bytes is too long`));
      throw new ProtocolError(`${name} data of ${length} bytes`);
    }
    const data = await io.read(length);

    if (io.tlsConfigured && !io.tlsActive && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
      if (option === NBD_OPT_EXPORT_NAME) throw new ProtocolError('NBD_OPT_EXPORT_NAME before TLS');
      io.send(encodeOptionError(option, NBD_REP_ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first'));
      continue;
    }
    try {
      switch (option) {
        case NBD_OPT_EXPORT_NAME: {
          const exp = host.findExport(data.toString('utf8'));
          // EXPORT_NAME has no error reply: an unknown name can only be answered by hanging up.
          if (!exp) throw new ProtocolError(`unknown export '${data.toString('utf8')}'`);
          io.send(encodeExportNameReply(exp.size, exp.transmissionFlags(state.structured, host.multiConn), noZeroes));
          return session(exp, state);
        }
        case NBD_OPT_ABORT:
          io.send(encodeOptionReply(option, NBD_REP_ACK));
          return undefined;
        case NBD_OPT_LIST:
          noData(data, name);
          for (const exp of host.listExports()) io.send(encodeOptionReply(option, NBD_REP_SERVER, encodeServerReply(exp.name, exp.description)));
          io.send(encodeOptionReply(option, NBD_REP_ACK));
          break;
        case NBD_OPT_STARTTLS:
          if (!io.tlsConfigured) throw new OptionError(NBD_REP_ERR_POLICY, 'TLS is not configured on this server');
          if (io.tlsActive) throw new OptionError(NBD_REP_ERR_INVALID, 'TLS is already active');
          noData(data, name);
          io.send(encodeOptionReply(option, NBD_REP_ACK));
          await io.startTls();
          state = { structured: false };
          break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO: {
          const exp = answerInfo(io, host, option, data, state);
          if (option === NBD_OPT_GO) return session(exp, state);
          break;
        }
        case NBD_OPT_STRUCTURED_REPLY:
          noData(data, name);
          if (state.structured) throw new OptionError(NBD_REP_ERR_INVALID, 'structured replies are already negotiated');
          state.structured = true;
          io.send(encodeOptionReply(option, NBD_REP_ACK));
          break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
          answerMeta(io, option, data, state, host);
          break;
        default:
          // NBD_OPT_EXTENDED_HEADERS and NBD_OPT_PEEK_EXPORT among them: the client falls back.
          io.send(encodeOptionError(option, NBD_REP_ERR_UNSUP, `${name} is not supported`));
      }
    } catch (err) {
      if (!(err instanceof OptionError)) throw err;
      io.send(encodeOptionError(option, err.reply, err.message));
    }
  }
}

function noData(data: Buffer, name: string): void {
  if (data.length > 0) throw new OptionError(NBD_REP_ERR_INVALID, `${name} takes no data`);
}

function lookup(host: HandshakeHost, name: string): NbdExport {
  const exp = host.findExport(name);
  if (!exp) throw new OptionError(NBD_REP_ERR_UNKNOWN, `export '${name.slice(0, 256)}' not present`);
  return exp;
}

function session(exp: NbdExport, state: State): Session {
  // Only a SET for this very export counts (spec §2.6).
  const contexts = state.meta?.name === exp.name ? state.meta.contexts : [];
  return { exp, structured: state.structured, contexts };
}

/** INFO and GO: NBD_INFO_EXPORT and BLOCK_SIZE always, NAME and DESCRIPTION when asked for. */
function answerInfo(io: HandshakeIo, host: HandshakeHost, option: number, data: Buffer, state: State): NbdExport {
  const req = decodeInfoRequest(data);
  const exp = lookup(host, req.name);
  const info = (body: Buffer): void => io.send(encodeOptionReply(option, NBD_REP_INFO, body));
  if (req.infos.includes(NBD_INFO_NAME)) info(encodeInfoString(NBD_INFO_NAME, exp.name));
  if (req.infos.includes(NBD_INFO_DESCRIPTION) && exp.description) info(encodeInfoString(NBD_INFO_DESCRIPTION, exp.description));
  info(encodeInfoBlockSize(exp.blockSizes()));
  info(encodeInfoExport(exp.size, exp.transmissionFlags(state.structured, host.multiConn)));
  io.send(encodeOptionReply(option, NBD_REP_ACK));
  return exp;
}

function answerMeta(io: HandshakeIo, option: number, data: Buffer, state: State, host: HandshakeHost): void {
  const set = option === NBD_OPT_SET_META_CONTEXT;
  // A SET replaces the active set even when it fails.
  if (set) state.meta = undefined;
  if (!state.structured) throw new OptionError(NBD_REP_ERR_INVALID, 'metadata contexts need structured replies first');
  const req = decodeMetaRequest(data);
  const exp = lookup(host, req.name);
  const contexts = selectContexts(exp, req.queries, !set);
  // LIST ids mean nothing to the client; the spec says to send 0.
  for (const c of contexts) io.send(encodeOptionReply(option, NBD_REP_META_CONTEXT, encodeMetaContextReply(set ? c.id : 0, c.name)));
  if (set) state.meta = { name: exp.name, contexts };
  io.send(encodeOptionReply(option, NBD_REP_ACK));
}
