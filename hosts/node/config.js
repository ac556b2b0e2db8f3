// wasi:config/store@0.2.0-draft-2024-09-27, served from one flat JSON object.
//
// The object maps each config key (contract/src/lib.rs, CONFIG_KEYS) to its string
// value. Values are secrets in part (API keys, passwords): nothing here prints one.

import { readFileSync } from "node:fs";

/**
 * The wasi:config/store interface over `values`, a plain object of strings.
 *
 * `get(key)` returns the value or `undefined` (WIT `none`); `getAll()` returns
 * every `[key, value]` pair. Neither can fail once the object is loaded.
 */
export function createConfigStore(values) {
  if (values === null || typeof values !== "object" || Array.isArray(values)) {
    throw new TypeError("the config must be a JSON object of string values");
  }
  const entries = new Map();
  for (const [key, value] of Object.entries(values)) {
    if (typeof value !== "string") {
      // The key only: the value may be a secret.
      throw new TypeError(`config key ${JSON.stringify(key)} must have a string value`);
    }
    entries.set(key, value);
  }
  return {
    get(key) {
      return entries.get(key);
    },
    getAll() {
      return [...entries];
    },
  };
}

/** Reads `path` (a JSON object of string values) into a wasi:config/store. */
export function loadConfigStore(path) {
  let text;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`cannot read the config file ${path}: ${e.message}`);
  }
  let values;
  try {
    values = JSON.parse(text);
  } catch {
    // Not e.message: V8 quotes the text around the error, which may be a secret.
    throw new Error(`the config file ${path} is not valid JSON`);
  }
  return createConfigStore(values);
}
