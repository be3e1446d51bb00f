/**
 * The enforcement step (docs/ARCHITECTURE.md, "One request"): one pure function
 * from what a request carries to a decision and the plan of what to answer.
 * Every entry point calls it (the proxy's requests, upgrades and ping, the
 * management API's key callers, the decision endpoint) and only carries out
 * its plan, so no listener maps decisions to answers by itself.
 */
import { resolveClientIp, type ClientIp, type CompiledTrust } from "../clientip/resolve.js";
import { messageOf, statusOf, type AnswerReason } from "./answers.js";
import { readCredential, type CompiledPlaces, type CredentialResult } from "./credential.js";
import {
  decide,
  type Credential,
  type Decision,
  type DecisionSettings,
  type KeyPolicy,
  type RouteQuestion,
} from "./decide.js";
import { requestRoute } from "./routes.js";

/** Where the step looks keys up (a store snapshot satisfies it). */
export interface KeyLookup {
  /** The key whose secret is `token`, if any. */
  lookupToken(token: string): KeyPolicy | undefined;
}

/** Settings of the step once the client address is known. */
export interface StepSettings extends DecisionSettings {
  /** Answered by keyfence itself (SPEC §4); undefined on listeners without a ping. */
  readonly pingPath: string | undefined;
  /** `<ping_path>/ip`, answered with the client address (SPEC §9); undefined without a ping. */
  readonly ipPath?: string | undefined;
  /** Where keys travel (`keys.credentials`, compiled). */
  readonly places: CompiledPlaces;
}

/** Settings of the whole step, compiled once from the configuration. */
export interface EnforceSettings extends StepSettings {
  readonly trust: CompiledTrust;
}

/** What the step reads of a request: plain values, no sockets. */
export interface RequestFacts {
  /** The request method (checked against `route_scopes`). */
  readonly method?: string | undefined;
  /** Raw header list (name, value, name, value...), repeats kept. */
  readonly rawHeaders: readonly string[];
  /** The request target as received (`req.url`). */
  readonly url: string | undefined;
  /** Socket peer address (or the PROXY protocol source). */
  readonly peer: string | undefined;
  /** The X-Forwarded-For value, repeated lines joined with commas. */
  readonly forwardedFor: string | undefined;
  /** The request's HTTP version ("1.1", "1.0"); undefined skips the Host check (see {@link enforce}). */
  readonly httpVersion?: string | undefined;
}

/**
 * What to do with a request: forward it, or answer with JSON. `status`,
 * `reason` and `message` are what the proxy writes and what the decision
 * endpoint puts in `X-Keyfence-Reason` / `X-Keyfence-Message`; `body`, when
 * set, replaces the default `{"message": ...}` body (the report-mode pong).
 */
export type AnswerPlan =
  | { readonly kind: "forward" }
  | {
      readonly kind: "answer";
      readonly status: number;
      readonly reason: AnswerReason;
      readonly message: string;
      readonly body: Readonly<Record<string, unknown>> | undefined;
    };

/** The step's result: the decision (for metrics, logs, observed sources), the plan, and the target to forward. */
export interface Enforcement {
  readonly decision: Decision;
  readonly plan: AnswerPlan;
  /** Origin-form path and query; undefined when the target was neither origin- nor absolute-form. */
  readonly target: string | undefined;
  /** The target's path, without the query (what logs show). */
  readonly path: string;
  /** False for answers that decide nothing (the `<ping_path>/ip` echo): not counted as a decision. */
  readonly decided: boolean;
}

/** A plan's JSON answer. */
export type JsonAnswer = Extract<AnswerPlan, { kind: "answer" }>;

const FORWARD: AnswerPlan = { kind: "forward" };

/** Reads the request target as origin-form path and query; undefined when it is neither origin- nor absolute-form. */
export function requestTarget(url: string | undefined): string | undefined {
  if (url === undefined || url === "") return undefined;
  if (url.charCodeAt(0) === 47) return url;
  if (!/^https?:\/\//i.test(url)) return undefined;
  try {
    const u = new URL(url);
    return u.pathname + u.search;
  } catch {
    return undefined;
  }
}

/** The path of a request target, without its query. */
export function pathOf(target: string): string {
  const q = target.indexOf("?");
  return q < 0 ? target : target.slice(0, q);
}

/** The JSON answer for `reason`; `detail` fills its message's blank (see {@link messageOf}). */
export function answerPlan(
  reason: AnswerReason,
  detail = "",
  body?: Readonly<Record<string, unknown>>,
  message?: string,
): JsonAnswer {
  return {
    kind: "answer",
    status: statusOf(reason),
    reason,
    message: message ?? messageOf(reason, detail),
    body,
  };
}

const BAD_TARGET = "request target must be a path";

/** The plan for `d`: a ping is always answered by keyfence (pong, or why not), anything else forwarded or refused. */
export function planOf(d: Decision, ping: boolean): AnswerPlan {
  if (!ping) return d.forward ? FORWARD : answerPlan(d.reason ?? "bad_request", detailOf(d));
  if (d.outcome === "missing_key") return answerPlan("missing_api_key");
  if (d.outcome === "unknown_key") return answerPlan("invalid_api_key");
  if (!d.forward) return answerPlan(d.reason ?? "bad_request", detailOf(d));
  if (d.outcome === "would_deny" && d.reason !== undefined) {
    return answerPlan("pong", "", {
      message: "pong",
      mode: "report",
      would_deny: { reason: d.reason, status: statusOf(d.reason), message: messageOf(d.reason, detailOf(d)) },
    });
  }
  return answerPlan("pong");
}

/** What fills the message of `d`'s reason: the client IP for IP refusals, else the decision's detail. */
function detailOf(d: Decision): string {
  return d.reason === "ip_not_allowed" ? d.client.text : (d.detail ?? "");
}

/** A decision made before any key is read: nothing forwarded, no reason of its own. */
function keyless(outcome: Decision["outcome"], client: ClientIp, settings: StepSettings): Decision {
  return {
    outcome,
    forward: false,
    reason: undefined,
    keyId: undefined,
    mode: settings.mode,
    client,
    key: undefined,
    detail: undefined,
  };
}

/** The client-address echo of `<ping_path>/ip`: no key is read, nothing is decided. */
function echoClient(client: ClientIp, target: string, path: string, settings: StepSettings): Enforcement {
  const decision = keyless("allowed", client, settings);
  const plan =
    client.ip === undefined
      ? answerPlan("invalid_client_ip")
      : answerPlan("client_ip", client.text, { ip: client.text });
  return { decision, plan, target, path, decided: false };
}

/** A request refused with 400 `bad_request` and `message` before any key is read (its question is malformed). */
export function badRequest(
  url: string | undefined,
  client: ClientIp,
  settings: StepSettings,
  message: string,
): Enforcement {
  return {
    decision: keyless("bad_request", client, settings),
    plan: answerPlan("bad_request", "", undefined, message),
    target: requestTarget(url),
    path: url ?? "",
    decided: true,
  };
}

/** Decides a request whose client address is already resolved (the management API resolves it first, for its throttle). */
export function enforceFor(
  rawHeaders: readonly string[],
  url: string | undefined,
  client: ClientIp,
  keys: KeyLookup,
  settings: StepSettings,
  method = "GET",
): Enforcement {
  const target = requestTarget(url);
  if (target === undefined) return badRequest(url, client, settings, BAD_TARGET);
  if (settings.ipPath !== undefined && pathOf(target) === settings.ipPath) {
    return echoClient(client, target, settings.ipPath, settings);
  }
  const route =
    settings.routes === undefined || settings.routes.rules.length === 0
      ? undefined
      : requestRoute(method, rawHeaders, target);
  return enforceCredential(readCredential(rawHeaders, target, settings.places), target, client, keys, settings, route);
}

/** `<ping_path>/ip` for a ping path. */
export function ipPathOf(pingPath: string): string {
  return pingPath.endsWith("/") ? `${pingPath}ip` : `${pingPath}/ip`;
}

/** The step from a credential already read (the management API reads it first, to recognise operator tokens). */
export function enforceCredential(
  read: CredentialResult,
  target: string,
  client: ClientIp,
  keys: KeyLookup,
  settings: StepSettings,
  route?: RouteQuestion,
): Enforcement {
  const credential: Credential = read.kind === "token" ? { kind: "key", key: keys.lookupToken(read.token) } : read;
  const path = pathOf(target);
  const ping = path === settings.pingPath;
  const decision = decide(credential, client, settings, ping ? undefined : route);
  return { decision, plan: planOf(decision, ping), target, path, decided: true };
}

/**
 * The enforcement step: credential → key → client IP → decision → plan. Pure
 * apart from the lookup's cache; never throws. A request to be forwarded
 * (`httpVersion` given) with two Host headers, or none in HTTP/1.1, is
 * refused first (RFC 9112 §3.2): an upstream would refuse it or pick one.
 */
export function enforce(facts: RequestFacts, keys: KeyLookup, settings: EnforceSettings): Enforcement {
  const client = resolveClientIp(facts.peer, facts.forwardedFor, settings.trust);
  if (facts.httpVersion !== undefined) {
    let hosts = 0;
    for (let i = 0; i < facts.rawHeaders.length; i += 2) {
      const name = facts.rawHeaders[i] as string;
      if (name.length === 4 && name.toLowerCase() === "host") hosts++;
    }
    if (hosts > 1) return badRequest(facts.url, client, settings, "multiple Host headers");
    if (hosts === 0 && facts.httpVersion !== "1.0")
      return badRequest(facts.url, client, settings, "missing Host header");
  }
  return enforceFor(facts.rawHeaders, facts.url, client, keys, settings, facts.method);
}
