export { BlockNode, type NodeOptions } from './core/block-node.js';
export { FilterNode } from './core/filter-node.js';
export { BlockError, NotSupportedError, type BlockErrorCode, type BlockErrorContext } from './core/errors.js';
export type {
  BlockDevice, BlockLimits, Capabilities, DetectZeroes, Extent, IoOptions, OpSupport, WriteOptions, ZeroOptions,
} from './core/types.js';
export { isAllZero } from './core/zero-detect.js';
export { open, registry, Registry, parseFilename, DEFAULT_MAX_CHAIN_DEPTH } from './registry/index.js';
export type { DriverDef, NodeSpec, OpenContext, OpenGate, OpenOptions } from './registry/index.js';
export { FileNode, type CacheMode, type FileOptions } from './drivers/protocol/file/index.js';
export { MemoryNode } from './drivers/protocol/memory/index.js';
export { NullNode } from './drivers/protocol/null/index.js';
export { RawNode } from './drivers/format/raw/index.js';
export { native, nativeStatus } from './native/index.js';
