// Passwords generated in the browser (for resetting an admin user's password: the API takes
// the new password, it does not make one).

/** Letters and digits without look-alikes (no 0/O, 1/l/I). */
export const ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

/**
 * A random password of `length` characters from `ALPHABET`, drawn without modulo bias from
 * `random` (crypto.getRandomValues by default). 20 characters carry about 115 bits.
 */
export function generatePassword(length = 20, random: (buf: Uint8Array) => Uint8Array = (b) => crypto.getRandomValues(b)): string {
  const n = ALPHABET.length;
  const limit = 256 - (256 % n);
  let out = "";
  while (out.length < length) {
    const buf = random(new Uint8Array(length * 2));
    for (const b of buf) {
      if (b < limit) out += ALPHABET[b % n];
      if (out.length === length) break;
    }
  }
  return out;
}

/** The API's rule for admin passwords: 12 to 1024 characters. */
export function passwordProblem(p: string): string | null {
  const len = [...p].length;
  if (len < 12) return "At least 12 characters.";
  if (len > 1024) return "At most 1024 characters.";
  return null;
}
