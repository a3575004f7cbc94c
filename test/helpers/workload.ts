/**
 * Seeded random workloads in qemu-io's command language, for driving the real qemu-io and
 * `vdisk io` through the same operations on two copies of one image. Commands only change the
 * image (`write -P`, `write -z`, `write -z -u`, `discard`, `flush`): no `read -P` checks, whose
 * output would differ as soon as the two images did, hiding the first real difference.
 *
 * Ranges are chosen to hit the places a format driver gets wrong: unaligned offsets and lengths,
 * tiny requests, requests that straddle one or several cluster (and subcluster) boundaries,
 * exactly aligned ones, and ones that end at the very end of the disk (including the whole of a
 * partial last cluster, which QEMU discards and zeroes as a whole cluster). Every range lies
 * inside the disk and is at least one byte long, so every command succeeds in qemu-io.
 *
 * The same seed and options give the same commands on every run and platform, so a failure is
 * replayed from its seed alone.
 */

export type WorkloadOp = 'write' | 'zero' | 'zero-unmap' | 'discard' | 'flush';

export interface WorkloadOptions {
  /** Virtual disk size in bytes (the image's `virtual-size`). */
  size: number;
  /** The image's cluster size: lengths and alignment are chosen relative to it. */
  clusterSize: number;
  /** Also aim at this finer granularity (the subcluster size with extended_l2=on; default 512). */
  unit?: number;
  /** How many commands. */
  count: number;
  seed: number;
  /** The longest zero write or discard, in clusters (default 4, at most 4). */
  maxClusters?: number;
  /** The longest data write in bytes (default maxClusters clusters), to bound the bytes moved with big clusters. */
  maxWriteBytes?: number;
  /** Relative weights of the kinds of command (defaults: DEFAULT_WEIGHTS). */
  weights?: Partial<Record<WorkloadOp, number>>;
}

export const DEFAULT_WEIGHTS: Readonly<Record<WorkloadOp, number>> = {
  write: 50,
  zero: 14,
  'zero-unmap': 12,
  discard: 18,
  flush: 6,
};

/** A small, fast, well-mixed 32-bit PRNG (mulberry32); deterministic across platforms. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** A uniform 32-bit unsigned integer. */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** A uniform integer in [lo, hi] (inclusive); hi - lo < 2^53. */
  int(lo: number, hi: number): number {
    if (hi < lo) throw new RangeError(`empty range [${lo}, ${hi}]`);
    const span = hi - lo + 1;
    // Scale a fraction rather than take a remainder: two 32-bit draws joined as one 64-bit
    // number round to a multiple of 2^11 in a double, and `% span` of that was 0 for nearly
    // every even span (a pick of two was the first 99.98 % of the time, offsets were multiples
    // of 2 KiB). 53 bits from two draws are exact.
    const fraction = span <= 2 ** 32 ? this.next() / 2 ** 32 : ((this.next() >>> 11) * 2 ** 32 + this.next()) / 2 ** 53;
    return lo + Math.floor(fraction * span);
  }
  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() / 2 ** 32 < p;
  }
  /** An integer in [lo, hi] whose logarithm is uniform: mostly small, now and then large. */
  logInt(lo: number, hi: number): number {
    const x = Math.exp(Math.log(lo) + (this.next() / 2 ** 32) * (Math.log(hi + 1) - Math.log(lo)));
    return Math.min(hi, Math.max(lo, Math.floor(x)));
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)]!;
  }
  /** A key chosen with probability proportional to its weight. */
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = (Object.entries(weights) as [K, number][]).filter(([, w]) => w > 0);
    const total = entries.reduce((s, [, w]) => s + w, 0);
    let r = (this.next() / 2 ** 32) * total;
    for (const [k, w] of entries) {
      if ((r -= w) < 0) return k;
    }
    return entries[entries.length - 1]![0];
  }
}

/** How a range is placed; each one aims at a different class of driver bug. */
type Shape = 'tiny' | 'unaligned' | 'straddle' | 'aligned' | 'unit-aligned' | 'end' | 'last-cluster';

const SHAPES: Readonly<Record<Shape, number>> = {
  tiny: 12, // 1-16 bytes anywhere: read-modify-write of a sector inside a cluster
  unaligned: 22, // any offset, up to one cluster (log-uniform length)
  straddle: 18, // crosses one or several cluster boundaries, unaligned at both ends
  aligned: 16, // whole clusters: the zero-flag and discard paths
  'unit-aligned': 14, // whole units (sectors or subclusters), unaligned to clusters
  end: 10, // ends exactly at the end of the disk
  'last-cluster': 6, // exactly the last (possibly partial) cluster, to the end of the disk
};

/** One [offset, length] inside the disk, at least one byte, at most maxLen bytes. */
function range(rng: Rng, shape: Shape, size: number, cluster: number, unit: number, maxLen: number): [number, number] {
  const clusters = Math.ceil(size / cluster);
  const clamp = (off: number, len: number): [number, number] => {
    const o = Math.min(Math.max(0, off), size - 1);
    return [o, Math.max(1, Math.min(len, maxLen, size - o))];
  };
  switch (shape) {
    case 'tiny':
      return clamp(rng.int(0, size - 1), rng.int(1, 16));
    case 'unaligned':
      return clamp(rng.int(0, size - 1), rng.logInt(1, cluster));
    case 'straddle': {
      // Start shortly before a boundary and run over 1..(max) more boundaries.
      const boundary = rng.int(1, Math.max(1, clusters - 1)) * cluster;
      const before = rng.int(1, Math.min(cluster - 1 || 1, rng.chance(0.5) ? 4096 : cluster));
      // Often just over the boundary (log-uniform), otherwise anywhere up to maxLen: over several more.
      const rest = Math.max(1, maxLen - before);
      return clamp(boundary - before, before + (rng.chance(0.4) ? rng.int(1, rest) : rng.logInt(1, rest)));
    }
    case 'aligned': {
      const n = rng.int(1, Math.max(1, Math.floor(maxLen / cluster)));
      return clamp(rng.int(0, clusters - 1) * cluster, n * cluster);
    }
    case 'unit-aligned': {
      const units = Math.max(1, Math.floor(size / unit));
      const n = rng.logInt(1, Math.max(1, Math.min(Math.floor(maxLen / unit), 2 * (cluster / unit))));
      return clamp(rng.int(0, units - 1) * unit, n * unit);
    }
    case 'end': {
      const len = Math.min(size, maxLen, rng.chance(0.3) ? rng.int(1, 16) : rng.logInt(1, Math.min(maxLen, size)));
      return [size - len, len];
    }
    case 'last-cluster': {
      const off = (clusters - 1) * cluster;
      const len = size - off;
      return len <= maxLen ? [off, len] : clamp(size - maxLen, maxLen);
    }
  }
}

/**
 * `count` qemu-io commands over a disk of `size` bytes. The numbers are plain decimal bytes;
 * patterns are `0xNN`, 0x00 included (a data write of zeros is not a zero write).
 */
export function workload(opts: WorkloadOptions): string[] {
  const { size, clusterSize: cluster, count, seed } = opts;
  const unit = opts.unit ?? 512;
  const maxClusters = Math.min(4, opts.maxClusters ?? 4);
  const maxZero = maxClusters * cluster;
  const maxWrite = Math.min(maxZero, opts.maxWriteBytes ?? maxZero);
  if (!(size > 0 && cluster > 0 && unit > 0 && count >= 0)) throw new RangeError('workload: bad options');
  const weights = { ...DEFAULT_WEIGHTS, ...opts.weights };
  const rng = new Rng(seed);
  const cmds: string[] = [];
  for (let i = 0; i < count; i++) {
    const op = rng.weighted(weights);
    if (op === 'flush') {
      cmds.push('flush');
      continue;
    }
    const shape = rng.weighted(SHAPES);
    const [off, len] = range(rng, shape, size, cluster, unit, op === 'write' ? maxWrite : maxZero);
    switch (op) {
      case 'write': {
        const p = rng.chance(0.05) ? 0 : rng.int(1, 255);
        cmds.push(`write -P 0x${p.toString(16).padStart(2, '0')} ${off} ${len}`);
        break;
      }
      case 'zero':
        cmds.push(`write -z ${off} ${len}`);
        break;
      case 'zero-unmap':
        cmds.push(`write -z -u ${off} ${len}`);
        break;
      case 'discard':
        cmds.push(`discard ${off} ${len}`);
        break;
    }
  }
  return cmds;
}

/** Splits commands into `parts` runs of nearly equal length (for a few process launches). */
export function batches<T>(items: readonly T[], parts: number): T[][] {
  const n = Math.max(1, Math.min(parts, items.length));
  const out: T[][] = [];
  for (let i = 0; i < n; i++) out.push(items.slice(Math.floor((i * items.length) / n), Math.floor(((i + 1) * items.length) / n)));
  return out;
}

/** `-c CMD` for each command, as both qemu-io and `vdisk io` take them. */
export const cmdArgs = (cmds: readonly string[]): string[] => cmds.flatMap((c) => ['-c', c]);
