// The proof-of-work's inner loop: a SHA-256 made for ALTCHA's search, SHA-256(salt + String(n)) for
// n in a range, compared with the challenge. The salt's whole 64-byte blocks are hashed once (the
// midstate); for each number only the last block or two are: its decimal digits are written into
// a buffer made once, nothing is allocated per number, no hex is made, and the digest's first word
// is compared before the rest. Millions of numbers a second per core, where awaiting
// crypto.subtle.digest once per number does about 45 thousand.
// Checked against node:crypto's SHA-256 in pow-sha256.test.ts.

// The first 32 bits of the fractional parts of the square roots (initial state) and cube roots (round
// constants) of the first 8 and 64 primes, as FIPS 180-4 defines them: computed, not spelled out.
const K = new Int32Array(64);
const H = new Int32Array(8);
for (let candidate = 2, found = 0; found < 64; candidate++) {
  let prime = true;
  for (let divisor = 2; divisor * divisor <= candidate; divisor++) if (candidate % divisor === 0) prime = false;
  if (!prime) continue;
  if (found < 8) H[found] = ((Math.sqrt(candidate) % 1) * 2 ** 32) | 0;
  K[found++] = ((Math.cbrt(candidate) % 1) * 2 ** 32) | 0;
}

/** Runs SHA-256's compression of the block in `w[0..15]` (its schedule is written to `w[16..63]`) on `state`, into `out`. */
function compress(state: Int32Array, w: Int32Array, out: Int32Array): void {
  for (let i = 16; i < 64; i++) {
    const x = w[i - 15]!;
    const y = w[i - 2]!;
    w[i] =
      (((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)) +
      (((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10)) +
      w[i - 7]! +
      w[i - 16]!;
  }
  let a = state[0]!;
  let b = state[1]!;
  let c = state[2]!;
  let d = state[3]!;
  let e = state[4]!;
  let f = state[5]!;
  let g = state[6]!;
  let h = state[7]!;
  for (let i = 0; i < 64; i++) {
    const t1 = (h + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + ((e & f) ^ (~e & g)) + K[i]! + w[i]!) | 0;
    const t2 = ((((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    h = g;
    g = f;
    f = e;
    e = (d + t1) | 0;
    d = c;
    c = b;
    b = a;
    a = (t1 + t2) | 0;
  }
  out[0] = state[0]! + a;
  out[1] = state[1]! + b;
  out[2] = state[2]! + c;
  out[3] = state[3]! + d;
  out[4] = state[4]! + e;
  out[5] = state[5]! + f;
  out[6] = state[6]! + g;
  out[7] = state[7]! + h;
}

/** Sets byte `index` (big-endian within each word) of the words `w` to `value`. */
function setByte(w: Int32Array, index: number, value: number): void {
  const shift = 24 - (index & 3) * 8;
  w[index >> 2] = (w[index >> 2]! & ~(255 << shift)) | (value << shift);
}

/**
 * The first number in `start..end` for which SHA-256(`salt` + that number in decimal) is `challenge`
 * (hex), or -1 when none is. Synchronous: a caller on the main thread gives it small ranges.
 */
export function searchSha256(salt: string, challenge: string, start: number, end: number): number {
  if (!/^[0-9a-f]{64}$/i.test(challenge)) return -1;
  const bytes = new TextEncoder().encode(salt);
  const target = new Int32Array(8);
  for (let i = 0; i < 8; i++) target[i] = parseInt(challenge.slice(i * 8, i * 8 + 8), 16) | 0;
  // The midstate: the salt's whole blocks, hashed once.
  const midstate = H.slice();
  const w = new Int32Array(64);
  const whole = bytes.length & ~63;
  for (let block = 0; block < whole; block += 64) {
    w.fill(0, 0, 16);
    for (let i = 0; i < 64; i++) setByte(w, i, bytes[block + i]!);
    compress(midstate, w, midstate);
  }
  const rest = bytes.length - whole;
  // The last block (`w`) and the one after it (`second`), when the digits, the padding and the length
  // do not fit in one; both keep their first 16 words from one number to the next.
  const second = new Int32Array(64);
  const digest = new Int32Array(8);
  const put = (index: number, value: number) => (index < 64 ? setByte(w, index, value) : setByte(second, index - 64, value));
  for (let n = Math.max(0, start), digits = 0, next = 0, two = false; n <= end; n++) {
    if (n >= next) {
      // As many digits as n has: the padding and the length move, written once for all these numbers.
      digits = String(n).length;
      next = 10 ** digits;
      two = rest + digits + 9 > 64;
      w.fill(0);
      second.fill(0);
      for (let i = 0; i < rest; i++) setByte(w, i, bytes[whole + i]!);
      put(rest + digits, 0x80);
      (two ? second : w)[15] = (bytes.length + digits) * 8;
    }
    for (let value = n, i = rest + digits - 1; i >= rest; i--, value = Math.floor(value / 10)) put(i, 48 + (value % 10));
    compress(midstate, w, digest);
    if (two) compress(digest, second, digest);
    if (digest[0] === target[0]) {
      let i = 1;
      while (i < 8 && digest[i] === target[i]) i++;
      if (i === 8) return n;
    }
  }
  return -1;
}
