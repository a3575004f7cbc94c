import {
  encodeOptionReplyHeader, NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_EXPORT, NBD_INFO_NAME,
  NBD_REP_INFO, NBD_REP_META_CONTEXT, NBD_REP_SERVER, OPTION_REPLY_HEADER_SIZE,
} from '../protocol.js';

/** One fixed-newstyle option reply, header and data in one buffer (one socket write). */
export function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeOptionReplyHeader(option, type, data.length), data], OPTION_REPLY_HEADER_SIZE + data.length);
}

/** An error reply carries its message as UTF-8 (the spec's optional error string). */
export function optionError(option: number, type: number, message: string): Buffer {
  return optionReply(option, type, Buffer.from(message));
}

/** NBD_REP_SERVER for LIST: name, then the description as the human-readable details. */
export function serverReply(option: number, name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name);
  const data = Buffer.alloc(4 + nameBytes.length);
  data.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(data, 4);
  return optionReply(option, NBD_REP_SERVER, Buffer.concat([data, Buffer.from(description)]));
}

export function metaContextReply(option: number, id: number, name: string): Buffer {
  const data = Buffer.alloc(4);
  data.writeUInt32BE(id, 0);
  return optionReply(option, NBD_REP_META_CONTEXT, Buffer.concat([data, Buffer.from(name)]));
}

export function infoExport(option: number, size: number, flags: number): Buffer {
  const data = Buffer.alloc(12);
  data.writeUInt16BE(NBD_INFO_EXPORT, 0);
  data.writeBigUInt64BE(BigInt(size), 2);
  data.writeUInt16BE(flags, 10);
  return optionReply(option, NBD_REP_INFO, data);
}

export function infoString(option: number, type: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, text: string): Buffer {
  const data = Buffer.alloc(2);
  data.writeUInt16BE(type, 0);
  return optionReply(option, NBD_REP_INFO, Buffer.concat([data, Buffer.from(text)]));
}

export function infoBlockSize(option: number, sizes: { minimum: number; preferred: number; maximum: number }): Buffer {
  const data = Buffer.alloc(14);
  data.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  data.writeUInt32BE(sizes.minimum, 2);
  data.writeUInt32BE(sizes.preferred, 6);
  data.writeUInt32BE(sizes.maximum, 10);
  return optionReply(option, NBD_REP_INFO, data);
}

/** The reply to NBD_OPT_EXPORT_NAME: size and flags, then 124 zero bytes unless NO_ZEROES was agreed. */
export function exportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const data = Buffer.alloc(noZeroes ? 10 : 134);
  data.writeBigUInt64BE(BigInt(size), 0);
  data.writeUInt16BE(flags, 8);
  return data;
}
