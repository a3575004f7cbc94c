/**
 * The NBD wire protocol (NetworkBlockDevice `doc/proto.md`; specs/nbd.md): every number, and one
 * encoder and one decoder per message, shared by the server (src/nbd/server) and the client
 * (src/nbd/client) — one side encodes what the other decodes. One file per part of the protocol:
 */
export * from './protocol/constants.js';
export * from './protocol/errors.js';
export * from './protocol/u64.js';
export * from './protocol/handshake.js';
export * from './protocol/option-requests.js';
export * from './protocol/option-replies.js';
export * from './protocol/transmission.js';
export * from './protocol/chunks.js';
export * from './protocol/allocation.js';
