/**
 * Slows down credential guessing: after `maxFailures` failed authentications
 * from one client IP within `windowMs`, that IP gets 429 with `Retry-After`
 * until the window ends. Memory is bounded by an LRU of client IPs.
 */
import { LRUCache } from "lru-cache";

/** Throttle settings. */
export interface ThrottleOptions {
  readonly maxFailures: number;
  readonly windowMs: number;
  /** Most client IPs remembered at once. */
  readonly maxClients?: number;
  readonly now?: () => number;
}

interface Window {
  start: number;
  failures: number;
}

/** Counts failed authentications per client IP. */
export class FailureThrottle {
  private readonly windows: LRUCache<string, Window>;
  private readonly now: () => number;

  constructor(private readonly options: ThrottleOptions) {
    this.windows = new LRUCache({ max: options.maxClients ?? 10_000 });
    this.now = options.now ?? Date.now;
  }

  /** Seconds the client must wait, or 0 when it may try. */
  retryAfter(client: string): number {
    const w = this.windows.get(client);
    if (w === undefined) return 0;
    const elapsed = this.now() - w.start;
    if (elapsed >= this.options.windowMs) {
      this.windows.delete(client);
      return 0;
    }
    return w.failures >= this.options.maxFailures ? Math.ceil((this.options.windowMs - elapsed) / 1000) : 0;
  }

  /** Records a failed attempt. */
  fail(client: string): void {
    const now = this.now();
    const w = this.windows.get(client);
    if (w === undefined || now - w.start >= this.options.windowMs)
      this.windows.set(client, { start: now, failures: 1 });
    else w.failures++;
  }
}
