/**
 * Exponential back-off with full jitter: the n-th retry waits a random time between 0 and
 * `min(max, base * 2^n)`, so clients of a gateway that died do not all come back at once.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly baseMs = 250,
    private readonly maxMs = 15_000,
    private readonly random: () => number = Math.random,
  ) {}

  /** The wait before the next attempt; each call counts one more failure. */
  next(): number {
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    return Math.floor(this.random() * ceiling);
  }

  /** At least `ms` (a server's `Retry-After`), jittered upwards by up to a quarter. */
  atLeast(ms: number): number {
    this.attempt += 1;
    return Math.floor(ms * (1 + this.random() / 4));
  }

  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}
