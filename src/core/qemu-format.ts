/*
 * Text formats qemu-img prints, reproduced so scripts that parse qemu-img output parse ours.
 */

/** qemu's size_to_str(): three significant digits ("%0.3g") with a binary unit, "4 MiB". */
export function sizeToStr(bytes: number): string {
  const suffixes = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];
  // Scaled by 1000/1024 so the mantissa stays below 1000 and "%g" never goes exponential.
  const exp = bytes === 0 ? 0 : Math.floor(Math.log2(bytes / (1000 / 1024))) + 1;
  const i = Math.max(0, Math.min(suffixes.length - 1, Math.trunc((exp - 1) / 10)));
  return `${formatG3(bytes / 2 ** (i * 10))} ${suffixes[i]}B`;
}

/** printf("%0.3g"). */
export function formatG3(value: number): string {
  if (value === 0) return '0';
  const exponent = Math.floor(Math.log10(Math.abs(value)));
  const rounded = Number(value.toPrecision(3));
  const roundedExp = Math.floor(Math.log10(Math.abs(rounded)));
  if (Math.max(exponent, roundedExp) >= 3 || roundedExp < -4) {
    const [mant, e] = rounded.toExponential(2).split('e');
    const m = mant!.replace(/\.?0+$/, '');
    const n = Number(e);
    return `${m}e${n < 0 ? '-' : '+'}${String(Math.abs(n)).padStart(2, '0')}`;
  }
  return String(rounded);
}

/** JSON as QEMU's pretty printer lays it out (four-space indent, `"key": value`). */
export function qemuJson(value: unknown): string {
  return JSON.stringify(value, null, 4);
}
