/**
 * The `proxy_protocol` setting (SPEC §7): the peers that must open each
 * connection with a PROXY protocol header, written like `trusted_proxies`
 * (names, addresses, CIDRs) and compiled by the same function.
 */
import { compileTrust, type CompiledTrust } from "../clientip/resolve.js";
import type { YamlFile } from "../util/yaml.js";

/** Compiles `proxy_protocol` (absent: nobody); problems go to `y`, risky entries to `warnings`. */
export function readProxyProtocol(y: YamlFile, raw: unknown, warnings: string[]): CompiledTrust | undefined {
  const setting = raw ?? [];
  if (!Array.isArray(setting)) {
    y.fail(["proxy_protocol"], "must be a list of names, addresses and CIDR ranges", setting);
    return undefined;
  }
  const compiled = compileTrust(setting);
  if (Array.isArray(compiled)) {
    for (const p of compiled) y.fail(["proxy_protocol", p.index], p.reason, p.value);
    return undefined;
  }
  for (const c of compiled.catchAll) {
    warnings.push(
      `proxy_protocol lists every address (${c}): every client must then send a PROXY header, and any that can reach the port can choose its own address`,
    );
  }
  return compiled;
}
