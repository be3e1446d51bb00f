/**
 * Denial floods (a stolen key hammered from many addresses) must not fill the
 * disk: each key gets a `warn` line per denial up to `perSecond` lines a
 * second; the rest of that second is folded into one `denied_summary` line
 * (how many, from how many /24 or /64 networks, the busiest ones). Counters
 * and observed sources are kept elsewhere and stay exact.
 */
import type { Logger } from "pino";
import { formatCidr, type Ip } from "../ip/address.js";
import { performance } from "node:perf_hooks";
import type { Enforcement } from "../policy/enforce.js";
import { LineFormat } from "../util/logline.js";
import type { Metrics } from "./metrics.js";
import type { SourceTracker } from "./sources.js";

/** Fields of a denial line (`listener` is set by listeners other than the proxy). */
const DENIAL_FIELDS = [
  "event",
  "request_id",
  "reason",
  "key_id",
  "client_ip",
  "peer_ip",
  "method",
  "path",
  "mode",
  "listener",
] as const;
/** The line of a request refused by its key's allow list (or its client IP). */
export const DENIED_LINE = new LineFormat("warn", DENIAL_FIELDS, "request denied");
/** The line of a request report mode forwarded although its key's list would refuse it. */
export const WOULD_DENY_LINE = new LineFormat(
  "warn",
  DENIAL_FIELDS,
  "request would be denied (report mode): forwarded",
);
/** The access log line (`access_log: true`), one per request. */
export const ACCESS_LINE = new LineFormat(
  "info",
  [
    "event",
    "request_id",
    "method",
    "path",
    "status",
    "outcome",
    "decision",
    "key_id",
    "client_ip",
    "duration_ms",
    "listener",
  ] as const,
  "request",
);

/** Lines a key may write per second before its denials are summarised (the 20/s). */
export const DENIAL_LINES_PER_SECOND = 20;
/** Most networks a summary tells apart per key and second; further ones are counted, not named. */
const MAX_NETWORKS = 1000;
/** Busiest networks named in a summary. */
const TOP = 5;

interface Net {
  readonly ip: Ip;
  count: number;
}

interface KeyWindow {
  second: number;
  lines: number;
  folded: number;
  unknownIp: number;
  networks: Map<number | string, Net>;
  overflow: number;
}

/** Options; `now` and `schedule` are injectable so tests drive the clock. */
export interface DenialLogOptions {
  readonly perSecond?: number;
  readonly now?: () => number;
  /** Runs `fn` after `ms`; the default is an unref'd setTimeout. */
  readonly schedule?: (fn: () => void, ms: number) => void;
}

/** Per-key rate limit of denial lines, with one summary line per key and second for the rest. */
export class DenialLog {
  private readonly windows = new Map<string, KeyWindow>();
  private readonly perSecond: number;
  private readonly now: () => number;
  private readonly schedule: (fn: () => void, ms: number) => void;
  private scheduled = false;

  constructor(
    private readonly log: Logger,
    options: DenialLogOptions = {},
  ) {
    this.perSecond = options.perSecond ?? DENIAL_LINES_PER_SECOND;
    this.now = options.now ?? Date.now;
    this.schedule =
      options.schedule ??
      ((fn, ms) => {
        setTimeout(fn, ms).unref();
      });
  }

  /**
   * Called for each denial of `keyId` from `ip` at `at` (ms since the epoch):
   * true when its own line may be written; otherwise it is counted into the
   * key's summary of that second.
   */
  admit(keyId: string, ip: Ip | undefined, at: number): boolean {
    const second = Math.floor(at / 1000);
    let w = this.windows.get(keyId);
    if (w === undefined) {
      if (this.windows.size >= 10_000) this.flush(at);
      w = { second, lines: 0, folded: 0, unknownIp: 0, networks: new Map(), overflow: 0 };
      this.windows.set(keyId, w);
    } else if (w.second !== second) {
      if (w.folded > 0) this.summarise(keyId, w);
      w.second = second;
      w.lines = 0;
      w.folded = 0;
      w.unknownIp = 0;
      w.overflow = 0;
      if (w.networks.size > 0) w.networks = new Map();
    }
    if (w.lines < this.perSecond) {
      w.lines++;
      return true;
    }
    w.folded++;
    if (ip === undefined) w.unknownIp++;
    else {
      const a = ip.family === 4 ? (ip.w3 & 0xffffff00) >>> 0 : ip.w0;
      const id: number | string = ip.family === 4 ? a : `${String(a)}:${String(ip.w1)}`;
      const n = w.networks.get(id);
      if (n !== undefined) n.count++;
      else if (w.networks.size < MAX_NETWORKS) {
        const net: Ip =
          ip.family === 4 ? { family: 4, w0: 0, w1: 0, w2: 0, w3: a } : { family: 6, w0: a, w1: ip.w1, w2: 0, w3: 0 };
        w.networks.set(id, { ip: net, count: 1 });
      } else w.overflow++;
    }
    if (!this.scheduled) {
      this.scheduled = true;
      this.schedule(
        () => {
          this.scheduled = false;
          this.flush(this.now());
        },
        1000 - (at % 1000) + 5,
      );
    }
    return false;
  }

  /** Writes the summaries of seconds that ended before `at`, and forgets quiet keys; reschedules while summaries are pending. */
  flush(at: number): void {
    const second = Math.floor(at / 1000);
    let pending = false;
    for (const [keyId, w] of this.windows) {
      if (w.second >= second) {
        if (w.folded > 0) pending = true;
        continue;
      }
      if (w.folded > 0) this.summarise(keyId, w);
      this.windows.delete(keyId);
    }
    if (pending && !this.scheduled) {
      this.scheduled = true;
      this.schedule(
        () => {
          this.scheduled = false;
          this.flush(this.now());
        },
        1000 - (at % 1000) + 5,
      );
    }
  }

  private summarise(keyId: string, w: KeyWindow): void {
    const nets = [...w.networks.values()].sort((x, y) => y.count - x.count);
    this.log.warn(
      {
        event: "denied_summary",
        key_id: keyId,
        second: new Date(w.second * 1000).toISOString(),
        logged: w.lines,
        count: w.folded,
        networks: w.networks.size + (w.overflow > 0 ? 1 : 0) + (w.unknownIp > 0 ? 1 : 0),
        ...(w.overflow > 0 ? { networks_more_than: MAX_NETWORKS } : {}),
        ...(w.unknownIp > 0 ? { unknown_ip: w.unknownIp } : {}),
        top: nets
          .slice(0, TOP)
          .map((n) => ({ network: formatCidr({ ip: n.ip, prefix: n.ip.family === 4 ? 24 : 64 }), count: n.count })),
      },
      `${String(w.folded)} more denials of this key in that second (${String(w.lines)} logged one by one)`,
    );
  }
}

/**
 * What every listener reports of each decision, the same way: the decision
 * counter and histogram, the key's observed sources, and the denial line
 * (limited per key by {@link DenialLog}).
 */
export class DecisionRecorder {
  private readonly denials: DenialLog;

  constructor(
    private readonly metrics: Metrics,
    private readonly sources: SourceTracker,
    private readonly log: Logger,
    /** Named in denial lines; undefined for the proxy listener. */
    private readonly listener: string | undefined,
  ) {
    this.denials = new DenialLog(log);
  }

  /** Records `e`, decided from `t0` (performance.now()); `requestId` is called only when a line is written. */
  record(e: Enforcement, method: string | undefined, requestId: string | (() => string), t0: number): void {
    if (!e.decided) return;
    const decision = e.decision;
    const client = decision.client;
    const t1 = performance.now();
    this.metrics.decision(decision.outcome, e.target === undefined ? 0 : (t1 - t0) / 1000);
    const reason = decision.reason;
    const refused = reason === "ip_not_allowed" || reason === "invalid_client_ip";
    if (decision.keyId !== undefined && client.ip !== undefined) {
      // A missing scope is no verdict on the address: its network counts as a request, not a denial.
      this.sources.record(decision.keyId, client.ip, refused, performance.timeOrigin + t1);
    }
    if (
      (refused || reason === "missing_scope") &&
      this.denials.admit(decision.keyId ?? "", client.ip, performance.timeOrigin + t1)
    ) {
      (decision.forward ? WOULD_DENY_LINE : DENIED_LINE).write(this.log, {
        event: decision.forward ? "would_deny" : "denied",
        request_id: typeof requestId === "string" ? requestId : requestId(),
        reason: decision.reason,
        key_id: decision.keyId,
        client_ip: client.text,
        peer_ip: client.peer,
        method,
        path: e.path,
        mode: decision.mode,
        listener: this.listener,
      });
    }
  }
}
