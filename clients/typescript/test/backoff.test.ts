import { describe, expect, it } from "vitest";

import { Backoff } from "../src/backoff.js";

describe("Backoff", () => {
  it("doubles its ceiling up to the maximum, with full jitter", () => {
    const top = new Backoff(100, 1000, () => 0.999999);
    expect([1, 2, 3, 4, 5, 6].map(() => top.next())).toEqual([99, 199, 399, 799, 999, 999]);
    const bottom = new Backoff(100, 1000, () => 0);
    expect(bottom.next()).toBe(0);
    top.reset();
    expect(top.next()).toBe(99);
  });

  it("spreads clients: a thousand first retries are not all alike", () => {
    const waits = Array.from({ length: 1000 }, () => new Backoff(1000, 15_000).next());
    expect(Math.min(...waits)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...waits)).toBeLessThan(1000);
    expect(new Set(waits).size).toBeGreaterThan(500);
  });

  it("waits at least a server's Retry-After", () => {
    const b = new Backoff(100, 1000, () => 0.5);
    expect(b.atLeast(2000)).toBe(2250);
  });
});
