/**
 * The request-level limits of SPEC §4 (`limits`): in-flight requests per
 * client, a bounded wait for an upstream connection, an idle limit for
 * upgraded tunnels, and the once-per-client-per-interval log of every limit.
 */
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { LimitKind } from "../metrics/metrics.js";

/** How often a client may appear in the log per limit. */
export const LIMIT_LOG_INTERVAL_MS = 60_000;
/** Clients remembered per interval; hits beyond are summed into one line. */
const LIMIT_LOG_CLIENTS = 10_000;

/**
 * Logs a limit reached by a client once per interval: the first hit at once,
 * the number of further hits at the end of the interval. Memory is bounded
 * whatever the number of clients.
 */
export class LimitLog {
  private hits = new Map<string, { limit: LimitKind; client: string; n: number }>();
  private overflow = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Logger,
    private readonly intervalMs = LIMIT_LOG_INTERVAL_MS,
  ) {}

  /** Records that `limit` refused or cut something of `client` (an address, or its raw text when not one). */
  hit(limit: LimitKind, client: string, detail?: Record<string, unknown>): void {
    const key = `${limit} ${client}`;
    const seen = this.hits.get(key);
    if (seen !== undefined) {
      seen.n++;
      return;
    }
    if (this.hits.size >= LIMIT_LOG_CLIENTS) {
      this.overflow++;
      return;
    }
    this.hits.set(key, { limit, client, n: 1 });
    this.log.warn(
      { event: "limited", limit, client_ip: client, ...detail },
      `limit ${limit} reached by ${client}; repeats are counted, then logged once per ${this.intervalMs / 1000} s`,
    );
    if (this.timer === undefined) {
      this.timer = setTimeout(() => this.flush(), this.intervalMs);
      this.timer.unref();
    }
  }

  /** Logs the repeats of the interval now and starts a new one. */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const { limit, client, n } of this.hits.values()) {
      if (n > 1) {
        this.log.warn(
          { event: "limited", limit, client_ip: client, count: n - 1 },
          `limit ${limit} reached ${n - 1} more times by ${client}`,
        );
      }
    }
    if (this.overflow > 0) {
      this.log.warn(
        { event: "limited", count: this.overflow },
        `limits reached ${this.overflow} more times by clients beyond the ${LIMIT_LOG_CLIENTS} logged`,
      );
    }
    this.hits = new Map();
    this.overflow = 0;
  }
}

/** Counts forwarded requests in flight per client address (SPEC `inflight_per_client`). */
export class ClientSlots {
  private readonly inflight = new Map<string, number>();

  constructor(private readonly perClient: number) {}

  /** Takes a slot for `client`; false when it already holds all of its slots. */
  take(client: string): boolean {
    const n = this.inflight.get(client) ?? 0;
    if (n >= this.perClient) return false;
    this.inflight.set(client, n + 1);
    return true;
  }

  /** Gives back a slot taken by {@link take}. */
  give(client: string): void {
    const n = this.inflight.get(client) ?? 0;
    if (n <= 1) this.inflight.delete(client);
    else this.inflight.set(client, n - 1);
  }

  /** Forwarded requests of `client` in flight now. */
  held(client: string): number {
    return this.inflight.get(client) ?? 0;
  }
}

/** A request waiting for an upstream connection. */
interface Waiter {
  readonly start: () => void;
  readonly timer: NodeJS.Timeout;
}

/**
 * Admits forwarded requests to the upstream pool: at most `capacity` at once
 * (one pool connection each), the rest wait in arrival order for at most
 * `queueMs` (SPEC `queue_ms`), then are told the upstream is busy. undici's
 * own pool queue is unbounded and has no timeout, so it is never used.
 */
export class UpstreamGate {
  private busy = 0;
  private readonly waiting = new Set<Waiter>();

  constructor(
    private readonly capacity: number,
    private readonly queueMs: number,
  ) {}

  /**
   * Calls `start` once a connection is free (at once, when one is), or
   * `busy` when none frees up within `queueMs`. When the request has to wait,
   * returns a function that withdraws it (a client that left). After
   * `start`, the caller must {@link release} exactly once.
   */
  acquire(start: () => void, busy: () => void): (() => void) | undefined {
    if (this.busy < this.capacity) {
      this.busy++;
      start();
      return undefined;
    }
    const waiter: Waiter = {
      start,
      timer: setTimeout(() => {
        this.waiting.delete(waiter);
        busy();
      }, this.queueMs),
    };
    this.waiting.add(waiter);
    return () => {
      if (this.waiting.delete(waiter)) clearTimeout(waiter.timer);
    };
  }

  /** Gives a connection back: the longest-waiting request takes it. */
  release(): void {
    for (const next of this.waiting) {
      this.waiting.delete(next);
      clearTimeout(next.timer);
      next.start();
      return;
    }
    this.busy--;
  }

  /** Requests holding a connection now. */
  get inUse(): number {
    return this.busy;
  }

  /** Requests waiting for one now. */
  get queued(): number {
    return this.waiting.size;
  }
}

/**
 * Closes an upgraded tunnel after `ms` without traffic either way (SPEC
 * `tunnel_idle_ms`): every byte of the tunnel is read from or written to the
 * client socket, so its inactivity timer sees both directions.
 */
export function closeWhenIdle(
  client: Socket | Duplex,
  tunnel: { destroy(): void },
  ms: number,
  onIdle: () => void,
): void {
  if (!("setTimeout" in client) || typeof client.setTimeout !== "function") return;
  client.setTimeout(ms);
  client.once("timeout", () => {
    onIdle();
    tunnel.destroy();
    client.destroy();
  });
}
