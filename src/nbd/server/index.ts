export { NbdServer, type ListenTarget, type NbdServerOptions } from './server.js';
export { NbdExport, type DiscardMode, type ExportOptions } from './export.js';
export { DEFAULT_LIMITS, type ConnectionLimits, type ConnectionStats } from './connection.js';
export { loadPskCredentials, loadX509Credentials, type TlsCredentials } from './tls.js';
