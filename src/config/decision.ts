/** The `decision` section (SPEC §8): where the decision endpoint for an existing ingress listens. */
import type { YamlFile, YamlPath } from "../util/yaml.js";
import type { ListenAddress } from "./config.js";

/** The validated `decision` section. */
export interface DecisionConfig {
  readonly listen: ListenAddress;
}

/**
 * Validates `decision: {listen}`; undefined when the section is absent (the
 * listener does not start) or invalid (problems recorded on `y`). `listenAt`
 * parses one listen address the way every listener's is parsed.
 */
export function readDecision(
  y: YamlFile,
  raw: unknown,
  listenAt: (path: YamlPath, raw: unknown) => ListenAddress | undefined,
): DecisionConfig | undefined {
  if (raw === undefined || raw === null) return undefined;
  const d = y.mapping(["decision"], raw, ["listen"]);
  if (d === undefined) return undefined;
  if (d["listen"] === undefined) {
    y.fail(["decision"], 'missing field "listen" (e.g. "127.0.0.1:8081")');
    return undefined;
  }
  const listen = listenAt(["decision", "listen"], d["listen"]);
  return listen === undefined ? undefined : { listen };
}

/** Risky but valid `decision` settings, as warnings to log at start. */
export function decisionWarnings(
  decision: DecisionConfig | undefined,
  trustsNobody: boolean,
  isLoopback: (host: string) => boolean,
  format: (a: ListenAddress) => string,
): string[] {
  if (decision === undefined) return [];
  const out: string[] = [];
  if (trustsNobody) {
    out.push(
      "decision.listen is set but trusted_proxies is empty: every decision is made for the ingress's own address (list the ingress in trusted_proxies)",
    );
  }
  if (!isLoopback(decision.listen.host)) {
    out.push(
      `the decision listener ${format(decision.listen)} is not on loopback: whoever reaches it can test keys and, from a trusted address, choose the client IP`,
    );
  }
  return out;
}
