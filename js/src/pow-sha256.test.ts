// The proof-of-work's own SHA-256 (pow-sha256.ts) against node:crypto's, on random salts and
// numbers: salts of every length up to three blocks, those whose digits, padding or length cross
// into another block (50 to 70 and 110 to 130 bytes), non-ASCII salts, numbers from 0 to 10^9.
import { createHash, randomBytes, randomInt } from "node:crypto";
import { createChallenge, verifySolution } from "altcha-lib/v1";
import { describe, expect, test } from "vitest";

import { searchSha256 } from "./pow-sha256.ts";

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");

/** A random salt of `length` bytes, in the characters ALTCHA's salts have (hex and a query string). */
const randomSalt = (length: number) =>
  Array.from(randomBytes(length), (byte) => "0123456789abcdef?=&cexpirs_0123456789ABCDEFxyz"[byte % 46]).join("");

/** A random number with as many digits as any from 0 to 10^9 (each digit count as likely). */
function randomNumber(): number {
  const digits = randomInt(1, 11);
  return digits === 10 ? randomInt(1e9 - 1e3, 1e9 + 1) : randomInt(digits === 1 ? 0 : 10 ** (digits - 1), 10 ** digits);
}

describe("searchSha256", () => {
  test.each([
    ["every length from 0 to 200 bytes", Array.from({ length: 201 }, (_, length) => length)],
    ["50 to 70 bytes (a second last block)", Array.from({ length: 21 }, (_, offset) => 50 + offset)],
    ["110 to 130 bytes", Array.from({ length: 21 }, (_, offset) => 110 + offset)],
  ])("finds the number node:crypto's SHA-256 gives, salts of %s", (_name, lengths) => {
    let checked = 0;
    for (const length of lengths) {
      for (let round = 0; round < 20; round++) {
        const salt = randomSalt(length);
        const number = randomNumber();
        const start = Math.max(0, number - randomInt(0, 40));
        expect(searchSha256(salt, sha256(salt + number), start, number + randomInt(0, 40)), `${JSON.stringify(salt)} + ${number}`).toBe(number);
        checked++;
      }
    }
    expect(checked).toBe(lengths.length * 20);
  });

  test("every number across a digit count's change, where the padding moves (salts of 50 to 70 bytes)", () => {
    for (let length = 50; length <= 70; length++) {
      const salt = randomSalt(length);
      for (const number of [0, 9, 10, 99, 100, 999999, 1000000, 99999999, 100000000, 999999999, 1000000000]) {
        expect(searchSha256(salt, sha256(salt + number), Math.max(0, number - 3), number + 3)).toBe(number);
      }
    }
  });

  test("a salt with characters beyond ASCII is hashed as UTF-8", () => {
    for (const salt of ["é", "sel de Guérande ✓", "🧂".repeat(16), "ü".repeat(30)]) {
      expect(searchSha256(salt, sha256(`${salt}4242`), 0, 5000)).toBe(4242);
    }
  });

  test("the first solution in the range; -1 when none is in it or the challenge is not hex", () => {
    const salt = randomSalt(24);
    const challenge = sha256(`${salt}500`);
    expect(searchSha256(salt, challenge, 0, 1000)).toBe(500);
    expect(searchSha256(salt, challenge.toUpperCase(), 0, 1000)).toBe(500);
    expect(searchSha256(salt, challenge, 0, 499)).toBe(-1);
    expect(searchSha256(salt, challenge, 501, 2000)).toBe(-1);
    expect(searchSha256(salt, challenge, 500, 500)).toBe(500);
    expect(searchSha256(salt, challenge, 10, 5)).toBe(-1);
    expect(searchSha256(salt, "not hex", 0, 1000)).toBe(-1);
    expect(searchSha256(salt, challenge.slice(1), 0, 1000)).toBe(-1);
  });

  test("solves real ALTCHA challenges: altcha-lib verifies the payload", async () => {
    for (let round = 0; round < 5; round++) {
      const challenge = await createChallenge({ hmacKey: "key", maxnumber: 50000, expires: new Date(Date.now() + 60_000), params: { c: "0123456789abcdef", s: "0" } });
      const number = searchSha256(challenge.salt, challenge.challenge, 0, 50000);
      expect(number).toBeGreaterThanOrEqual(0);
      const payload = btoa(JSON.stringify({ ...challenge, number }));
      expect(await verifySolution(payload, "key")).toBe(true);
    }
  });
});
