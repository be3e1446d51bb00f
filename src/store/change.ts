/** One change to a key store, shared by the snapshot, the stores and the file splicer. */
import type { KeyRecord } from "./keysfile.js";

/** One change to the store; `update` carries the whole new record. */
export type KeyChange =
  | { readonly kind: "create"; readonly record: KeyRecord }
  | { readonly kind: "update"; readonly record: KeyRecord }
  | { readonly kind: "delete"; readonly id: string };

/** The id of the key `change` is about. */
export function changedId(change: KeyChange): string {
  return change.kind === "delete" ? change.id : change.record.id;
}
