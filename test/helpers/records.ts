/** Key records for store tests, and the records a keys file holds. */
import { parseKeysFile, type KeyRecord } from "../../src/store/keysfile.js";
import { formatStoreProblem } from "../../src/store/store.js";
import { secretDigest } from "../../src/store/digest.js";

/** A plain record `id` (secret `secret-<id>`, no scopes, no list), with `over` applied. */
export function rec(id: string, over: Partial<KeyRecord> = {}): KeyRecord {
  return {
    id,
    name: id,
    secretDigest: secretDigest(`secret-${id}`),
    scopes: [],
    ipAllowList: [],
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
    ...over,
  };
}

/** The records of keys-file text `file`; throws naming the problems when it does not parse. */
export function records(file: string | Buffer): KeyRecord[] {
  const r = parseKeysFile("k", String(file), 1000);
  if (!r.ok) throw new Error(r.problems.map(formatStoreProblem).join("\n"));
  return r.keys;
}
