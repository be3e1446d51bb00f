/**
 * `keyfence healthcheck`: asks the running keyfence described by a
 * configuration whether it is alive, for a container's HEALTHCHECK (which has
 * no curl and must not guess ports). With an admin listener it asks
 * `GET /healthz` there; without one it asks the proxy listener's ping path,
 * which keyfence always answers itself (any status, marked by
 * `x-keyfence-reason`), never the upstream.
 */
import { formatListen, type Config, type ListenAddress } from "../config/config.js";

/** How long a healthcheck waits for an answer (below Docker's usual 3 s timeout). */
export const HEALTHCHECK_TIMEOUT_MS = 2500;

/** The outcome of one healthcheck. */
export interface HealthResult {
  readonly healthy: boolean;
  /** One line for the operator: what was asked and what came back. */
  readonly message: string;
}

/** The address a local client reaches a listener on: the wildcard addresses become loopback. */
export function connectHost(listen: ListenAddress): string {
  if (listen.host === "0.0.0.0") return "127.0.0.1";
  if (listen.host === "::") return "::1";
  return listen.host;
}

/** The URL the healthcheck asks for `config`, and how it recognises keyfence's own answer. */
export function healthTarget(config: Config): { url: string; via: "admin" | "proxy" } {
  const at = (l: ListenAddress, path: string): string =>
    `http://${formatListen({ host: connectHost(l), port: l.port })}${path}`;
  if (config.admin) return { url: at(config.admin.listen, "/healthz"), via: "admin" };
  return { url: at(config.listen, config.pingPath), via: "proxy" };
}

/** Asks the keyfence that `config` describes whether it is up; never throws. */
export async function healthcheck(config: Config, timeoutMs = HEALTHCHECK_TIMEOUT_MS): Promise<HealthResult> {
  const { url, via } = healthTarget(config);
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: "manual" });
    await res.arrayBuffer();
  } catch (err) {
    const e = err as Error & { cause?: { code?: string } };
    const why = e.name === "TimeoutError" ? `no answer within ${timeoutMs} ms` : (e.cause?.code ?? e.message);
    return { healthy: false, message: `unhealthy: ${url}: ${why}` };
  }
  if (via === "admin") {
    return res.status === 200
      ? { healthy: true, message: `healthy: ${url} answered 200` }
      : { healthy: false, message: `unhealthy: ${url} answered ${res.status}` };
  }
  const reason = res.headers.get("x-keyfence-reason");
  return reason !== null
    ? { healthy: true, message: `healthy: ${url} answered ${res.status} (${reason})` }
    : { healthy: false, message: `unhealthy: ${url} answered ${res.status} without x-keyfence-reason (not keyfence)` };
}

/** Runs the healthcheck for the CLI: prints its line, returns the exit code (0 healthy, 1 not). */
export async function runHealthcheck(config: Config): Promise<number> {
  const r = await healthcheck(config);
  (r.healthy ? process.stdout : process.stderr).write(`${r.message}\n`);
  return r.healthy ? 0 : 1;
}
