// wasi:keyvalue@0.2.0-draft2, interfaces `store` and `atomics`, held in memory and,
// when a file is given, kept in that JSON file (written through on every change, by
// write-then-rename, so a run that stops half-way leaves the last complete state).
//
// Semantics as wit/deps/keyvalue-draft2 says:
// - `open` knows a fixed set of buckets (Spin's default: just "default"); any other
//   identifier is `no-such-store`.
// - `get`/`set`/`delete`/`exists` act on one key; deleting an absent key does nothing.
// - `list-keys` pages through the keys in a stable (sorted) order; the cursor is the
//   last key of the page, and is absent on the last page.
// - Every write gives the key a new version from one store-wide counter, so a
//   compare-and-swap sees any write since its handle was made, even one that wrote the
//   same bytes or deleted and re-created the key (no ABA).
// - `cas.new` observes the key's value and version; `cas.current` returns the observed
//   value; `swap` writes only if the version is unchanged, else fails with a fresh
//   handle observing the value that won.
// - `increment` adds to a little-endian 64-bit signed integer (0 when absent), the
//   same encoding as the project's wasmtime host.
//
// Errors reach the component as the WIT's `error` variant (`{ tag, val }` objects);
// the transpiled glue turns a thrown plain object into the `err` case of the result.

import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";

/** Format tag of the JSON state file. */
const FORMAT = "mssp-node-kv/1";
/** Keys returned by one `list-keys` call unless told otherwise. */
export const DEFAULT_PAGE = 100;

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

/** The store's `error::other(message)`. */
function other(message) {
  return { tag: "other", val: message };
}

/** Reads a state file: bucket name → Map(key → {value, version}), and the last version. */
function readState(file, bucketNames) {
  const buckets = new Map(bucketNames.map((name) => [name, new Map()]));
  if (!file || !existsSync(file)) {
    return { buckets, lastVersion: 0 };
  }
  let doc;
  try {
    doc = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new Error(`the key-value file ${file} cannot be read as JSON: ${e.name}`);
  }
  if (doc?.format !== FORMAT || typeof doc.buckets !== "object" || doc.buckets === null) {
    throw new Error(`the key-value file ${file} is not a ${FORMAT} state file`);
  }
  let lastVersion = Number.isSafeInteger(doc.lastVersion) ? doc.lastVersion : 0;
  for (const [name, entries] of Object.entries(doc.buckets)) {
    const bucket = buckets.get(name) ?? new Map();
    buckets.set(name, bucket);
    for (const [key, entry] of Object.entries(entries ?? {})) {
      if (typeof entry?.value !== "string" || !Number.isSafeInteger(entry.version)) {
        throw new Error(`the key-value file ${file}: bad entry for ${JSON.stringify(key)}`);
      }
      bucket.set(key, {
        value: new Uint8Array(Buffer.from(entry.value, "base64")),
        version: entry.version,
      });
      lastVersion = Math.max(lastVersion, entry.version);
    }
  }
  return { buckets, lastVersion };
}

/**
 * A key-value store serving `wasi:keyvalue/store` and `wasi:keyvalue/atomics`.
 *
 * Options: `file`, the JSON file that keeps the state (none: memory only);
 * `buckets`, the identifiers `open` accepts (default `["default"]`); `pageSize`,
 * the keys per `list-keys` page.
 *
 * Returns `{ store, atomics }`, the two interface objects for the component's
 * imports.
 */
export function createKeyValue({ file = null, buckets = ["default"], pageSize = DEFAULT_PAGE } = {}) {
  const state = readState(file, buckets);
  const allowed = new Set(buckets);

  function persist() {
    if (!file) return;
    const doc = { format: FORMAT, lastVersion: state.lastVersion, buckets: {} };
    for (const [name, entries] of state.buckets) {
      const out = {};
      for (const [key, { value, version }] of entries) {
        out[key] = { value: Buffer.from(value).toString("base64"), version };
      }
      doc.buckets[name] = out;
    }
    const tmp = `${file}.tmp-${process.pid}`;
    try {
      writeFileSync(tmp, JSON.stringify(doc));
      renameSync(tmp, file);
    } catch (e) {
      throw other(`writing the key-value file: ${e.code ?? e.name}`);
    }
  }

  /** Writes `value` (or deletes the key when `null`) with a fresh version. */
  function write(entries, key, value) {
    if (value === null) {
      if (!entries.delete(key)) return;
    } else {
      state.lastVersion += 1;
      entries.set(key, { value: new Uint8Array(value), version: state.lastVersion });
    }
    persist();
  }

  function checkKey(key) {
    if (typeof key !== "string") throw other("the key must be a string");
  }

  class Bucket {
    #entries;

    constructor(entries) {
      this.#entries = entries;
    }

    /** The bucket's entries (for `atomics`, which takes a borrowed bucket). */
    static entries(bucket) {
      if (!(bucket instanceof Bucket)) throw other("not a bucket of this store");
      return bucket.#entries;
    }

    get(key) {
      checkKey(key);
      const entry = this.#entries.get(key);
      return entry ? new Uint8Array(entry.value) : undefined;
    }

    set(key, value) {
      checkKey(key);
      write(this.#entries, key, value);
    }

    delete(key) {
      checkKey(key);
      write(this.#entries, key, null);
    }

    exists(key) {
      checkKey(key);
      return this.#entries.has(key);
    }

    listKeys(cursor) {
      const sorted = [...this.#entries.keys()].sort();
      const start = cursor == null ? 0 : sorted.findIndex((k) => k > cursor);
      const rest = start < 0 ? [] : sorted.slice(start);
      const keys = rest.slice(0, pageSize);
      const more = rest.length > keys.length;
      return { keys, cursor: more ? keys[keys.length - 1] : undefined };
    }
  }

  function open(identifier) {
    if (!allowed.has(identifier)) throw { tag: "no-such-store" };
    let entries = state.buckets.get(identifier);
    if (!entries) {
      entries = new Map();
      state.buckets.set(identifier, entries);
    }
    return new Bucket(entries);
  }

  class Cas {
    #entries;
    #key;
    #observed;

    constructor(entries, key) {
      this.#entries = entries;
      this.#key = key;
      this.#observed = entries.get(key) ?? null;
    }

    static new(bucket, key) {
      checkKey(key);
      return new Cas(Bucket.entries(bucket), key);
    }

    current() {
      return this.#observed ? new Uint8Array(this.#observed.value) : undefined;
    }

    /** Writes `value` if the key still has the observed version; else a fresh handle. */
    static swap(cas, value) {
      if (!(cas instanceof Cas)) {
        throw { tag: "store-error", val: other("not a cas handle of this store") };
      }
      const now = cas.#entries.get(cas.#key) ?? null;
      if ((now?.version ?? null) !== (cas.#observed?.version ?? null)) {
        throw { tag: "cas-failed", val: new Cas(cas.#entries, cas.#key) };
      }
      try {
        write(cas.#entries, cas.#key, value);
      } catch (e) {
        throw { tag: "store-error", val: e };
      }
    }
  }

  function increment(bucket, key, delta) {
    checkKey(key);
    const entries = Bucket.entries(bucket);
    const entry = entries.get(key);
    let old = 0n;
    if (entry) {
      if (entry.value.length !== 8) {
        throw other(`increment: the value at ${JSON.stringify(key)} is not a 64-bit integer`);
      }
      old = Buffer.from(entry.value).readBigInt64LE(0);
    }
    const sum = old + BigInt(delta);
    if (sum < I64_MIN || sum > I64_MAX) {
      throw other(`increment: ${JSON.stringify(key)} would overflow`);
    }
    const bytes = Buffer.alloc(8);
    bytes.writeBigInt64LE(sum, 0);
    write(entries, key, bytes);
    return sum;
  }

  return {
    store: { Bucket, open },
    atomics: { Cas, increment, swap: Cas.swap },
  };
}
