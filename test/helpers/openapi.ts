/** Validates real responses against docs/openapi.yaml (OpenAPI 3.1, JSON Schema 2020-12). */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { parse } from "yaml";
import { send, type Reply, type Send } from "./http.js";

const FILE = resolve(fileURLToPath(import.meta.url), "../../../../docs/openapi.yaml");

type Json = Record<string, unknown>;

function pointer(parts: string[]): string {
  return parts.map((p) => p.replace(/~/g, "~0").replace(/\//g, "~1")).join("/");
}

/** The management API description, ready to check replies. */
export class OpenApi {
  readonly doc: Json;
  private readonly ajv: Ajv2020;

  constructor() {
    this.doc = parse(readFileSync(FILE, "utf8")) as Json;
    this.ajv = new Ajv2020({ strict: false, allErrors: true });
    (addFormats as unknown as (a: Ajv2020) => void)(this.ajv);
    this.ajv.addSchema(this.doc, "openapi");
  }

  private resolveRef(node: Json): { node: Json; path: string[] } | undefined {
    const ref = node["$ref"];
    if (typeof ref !== "string") return undefined;
    const path = ref.replace(/^#\//, "").split("/");
    let cur: unknown = this.doc;
    for (const p of path) cur = (cur as Json)[p];
    return { node: cur as Json, path };
  }

  /**
   * Calls the management API at `adminUrl` (`opts.path`, else the path
   * `template`), with `opts.json` sent as a JSON body, and checks the reply
   * against the description of `method template`.
   */
  async call(
    adminUrl: string,
    method: string,
    template: string,
    opts: Send & { path?: string; json?: unknown } = {},
  ): Promise<Reply> {
    const headers = [...(opts.headers ?? [])];
    let body = opts.body;
    if (opts.json !== undefined) {
      headers.push(["Content-Type", "application/json"]);
      body = JSON.stringify(opts.json);
    }
    const reply = await send(`${adminUrl}${opts.path ?? template}`, { ...opts, method, headers, body });
    this.check(method, template, reply);
    return reply;
  }

  /** Asserts that `reply` is a documented answer of `method template` and that its body matches the schema. */
  check(method: string, template: string, reply: Reply): void {
    const paths = this.doc["paths"] as Json;
    const op = (paths[template] as Json | undefined)?.[method.toLowerCase()] as Json | undefined;
    assert.ok(op, `${method} ${template} is not in docs/openapi.yaml`);
    const responses = op["responses"] as Json;
    let resp = responses[String(reply.status)] as Json | undefined;
    assert.ok(
      resp,
      `${method} ${template} answered ${reply.status}, which docs/openapi.yaml does not list: ${reply.body}`,
    );
    let base = ["paths", template, method.toLowerCase(), "responses", String(reply.status)];
    const ref = this.resolveRef(resp);
    if (ref) {
      resp = ref.node;
      base = ref.path;
    }
    const content = resp["content"] as Json | undefined;
    if (content === undefined) {
      assert.equal(reply.body, "", `${reply.status} must have no body`);
      return;
    }
    const type = (reply.headers["content-type"] ?? "").split(";")[0] ?? "";
    assert.ok(content[type], `${method} ${template} ${reply.status}: content type ${type} is not documented`);
    if (type !== "application/json") return;
    const schemaRef = `openapi#/${pointer([...base, "content", type, "schema"])}`;
    const validate = this.ajv.getSchema(schemaRef) ?? this.ajv.compile({ $ref: schemaRef });
    const ok = validate(reply.json());
    assert.ok(
      ok,
      `${method} ${template} ${reply.status} does not match docs/openapi.yaml: ${this.ajv.errorsText(validate.errors)}\n${reply.body}`,
    );
  }
}
