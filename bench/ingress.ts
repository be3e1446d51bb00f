/**
 * The shipped nginx ingress configuration (deploy/ingress/nginx/keyfence.conf)
 * made runnable in a directory of its own: its placeholder addresses replaced,
 * wrapped in a main nginx.conf with private temp paths. Used by the ingress
 * tests and the load benchmark, so both run exactly the file users get.
 */
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { ROOT } from "./procs.js";

/** A file under deploy/ingress with each `[from, to]` replaced; throws when a placeholder is missing. */
export function shippedIngress(file: string, replacements: ReadonlyArray<readonly [string, string]>): string {
  let text = readFileSync(join(ROOT, "deploy/ingress", file), "utf8");
  for (const [from, to] of replacements) {
    if (!text.includes(from)) throw new Error(`deploy/ingress/${file} no longer has its placeholder ${from}`);
    text = text.split(from).join(to);
  }
  return text;
}

/** Where the nginx ingress listens and whom it asks and forwards to. */
export interface NginxIngress {
  readonly port: number;
  readonly decisionPort: number;
  readonly appPort: number;
  /** false: a single process without master (callgrind counts it whole). Default true. */
  readonly master?: boolean;
  /** Lines added to the http context (e.g. a cache zone). */
  readonly httpExtra?: string;
  /** Edits the site text after the addresses are replaced (bench variants). */
  readonly edit?: (site: string) => string;
}

/** Writes nginx.conf for the shipped ingress configuration in `dir`; returns its path (run `nginx -c PATH -p DIR`). */
export function nginxIngressConfig(dir: string, o: NginxIngress): string {
  const site = shippedIngress("nginx/keyfence.conf", [
    ["127.0.0.1:8081", `127.0.0.1:${o.decisionPort}`],
    ["127.0.0.1:3000", `127.0.0.1:${o.appPort}`],
    ["listen 8080;", `listen 127.0.0.1:${o.port};`],
  ]);
  writeFileSync(join(dir, "keyfence.conf"), o.edit ? o.edit(site) : site);
  return writeNginxConf(dir, o.master !== false, `${o.httpExtra ?? ""}\n  include ${dir}/keyfence.conf;\n`);
}

/**
 * Writes `dir`/nginx.conf: one worker (with or without a master process),
 * temp paths inside `dir`, no access log, and `http` holding `httpBody`;
 * returns its path (run `nginx -c PATH -p DIR`).
 */
export function writeNginxConf(dir: string, master: boolean, httpBody: string): string {
  for (const d of ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]) mkdirSync(join(dir, d), { recursive: true });
  const conf = join(dir, "nginx.conf");
  writeFileSync(
    conf,
    `daemon off;
master_process ${master ? "on" : "off"};
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${httpBody}}
`,
  );
  return conf;
}

/**
 * `site` with its optional decision cache switched on (every "#cache " mark
 * removed), the cache files kept in `cacheDir`, whose parent is made
 * traversable: nginx started as root creates the directory for its workers'
 * unprivileged user, which must reach it.
 */
export function withDecisionCache(site: string, cacheDir: string): string {
  chmodSync(dirname(cacheDir), 0o711);
  const on = site.replace(/^(\s*)#cache /gm, "$1");
  if (on === site) throw new Error("deploy/ingress/nginx/keyfence.conf no longer has its #cache lines");
  return on.split("/run/nginx-keyfence").join(cacheDir);
}
