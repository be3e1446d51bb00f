/**
 * The failed-attempt limit (SPEC §5): at most `max` verifications of
 * credentials, codes and sign-ins per client IP in any `windowMs`. An attempt
 * is counted when it starts and refunded when it succeeds, so concurrent
 * attempts cannot all slip past a check made before any of them failed.
 */
import { LRUCache } from "lru-cache";

/** An attempt refused by the limit: the client waits `retryAfterS` seconds. */
export interface Limited {
  readonly limited: true;
  readonly retryAfterS: number;
}

/** The outcome of {@link AttemptLimit.attempt}: the verification's result, or a refusal before it ran. */
export type AttemptOutcome<T> = { readonly limited: false; readonly result: T } | Limited;

/** Where failed attempts are counted (in this process, or shared by replicas). */
export interface AttemptLimit {
  /**
   * Runs `verify` as one attempt of `client` if the client has one left:
   * counted before `verify` starts, refunded when `succeeded(result)` holds or
   * `verify` throws (an error is not a failed guess). Never calls `verify`
   * once the limit is reached.
   */
  attempt<T>(
    client: string,
    verify: () => T | Promise<T>,
    succeeded: (result: T) => boolean,
  ): Promise<AttemptOutcome<T>>;
  /** Seconds until `client` may attempt again; 0 when it may now. */
  retryAfter(client: string): Promise<number>;
}

/** Settings of {@link MemoryAttemptLimit}. */
export interface AttemptLimitOptions {
  /** Verifications allowed per client in any window. */
  readonly max: number;
  readonly windowMs: number;
  /** Most client IPs remembered at once. */
  readonly maxClients?: number;
  readonly now?: () => number;
}

/**
 * The limit in this process: per client, the start times of its counted
 * attempts within the window (a sliding log of at most `max` entries).
 * Reserving and refunding never yield, so a synchronous verification is
 * counted and refunded before any other request runs.
 */
export class MemoryAttemptLimit implements AttemptLimit {
  private readonly starts: LRUCache<string, number[]>;
  private readonly now: () => number;

  constructor(private readonly options: AttemptLimitOptions) {
    this.starts = new LRUCache({ max: options.maxClients ?? 10_000 });
    this.now = options.now ?? Date.now;
  }

  /** The client's counted attempts within the window, pruned in place (a refund holds on to the same array). */
  private live(client: string, now: number): number[] {
    let live = this.starts.get(client);
    if (live === undefined) {
      live = [];
      this.starts.set(client, live);
    }
    let expired = 0;
    while (expired < live.length && now - (live[expired] ?? now) >= this.options.windowMs) expired++;
    if (expired > 0) live.splice(0, expired);
    return live;
  }

  private wait(live: readonly number[], now: number): number {
    if (live.length < this.options.max) return 0;
    const oldest = live[0] ?? now;
    return Math.max(1, Math.ceil((oldest + this.options.windowMs - now) / 1000));
  }

  async attempt<T>(
    client: string,
    verify: () => T | Promise<T>,
    succeeded: (result: T) => boolean,
  ): Promise<AttemptOutcome<T>> {
    const now = this.now();
    const live = this.live(client, now);
    const wait = this.wait(live, now);
    if (wait > 0) return { limited: true, retryAfterS: wait };
    live.push(now);
    const refund = (): void => {
      const i = live.lastIndexOf(now);
      if (i >= 0) live.splice(i, 1);
    };
    let result: T;
    try {
      const r = verify();
      result = r instanceof Promise ? await r : r;
    } catch (err) {
      refund();
      throw err;
    }
    if (succeeded(result)) refund();
    return { limited: false, result };
  }

  retryAfter(client: string): Promise<number> {
    const now = this.now();
    return Promise.resolve(this.wait(this.live(client, now), now));
  }
}
