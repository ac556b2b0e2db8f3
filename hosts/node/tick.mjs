#!/usr/bin/env node
// One scheduled run of the bridge component under Node: what Spin's cron trigger does,
// in a second, independent host. The unchanged mssp_guest.wasm is transpiled by jco
// (`--instantiation async`), and this script binds its imports:
// - wasi:keyvalue/store + atomics → kv.js (state in a JSON file),
// - wasi:config/store → config.js (a JSON object of the tenant's config),
// - the standard WASI interfaces (http, io, clocks, random, cli) →
//   @bytecodealliance/preview2-shim,
// then calls the `handle-cron-event` export once.
//
//   node tick.mjs --component DIR --config CONFIG.json --kv STATE.json
//
// DIR holds jco's output (mssp_guest.js and its core modules). Exit status: 0 after a
// tick that did not fail, 1 when the tick failed (its error on stderr), 2 on a usage
// or setup error. The component's own log lines go to stderr.

import { existsSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { WASIShim } from "@bytecodealliance/preview2-shim/instantiation";

import { loadConfigStore } from "./config.js";
import { createKeyValue } from "./kv.js";

const USAGE = "usage: node tick.mjs --component DIR --config CONFIG.json --kv STATE.json";

/** The error text of whatever the export or the instantiation threw. */
function describe(e) {
  // jco wraps a `result` error in ComponentError, with the WIT value as `payload`;
  // the cron export's error is the variant `other(string)`.
  if (e && typeof e === "object" && "payload" in e) {
    const p = e.payload;
    return p && typeof p === "object" && "val" in p ? String(p.val) : JSON.stringify(p);
  }
  return e instanceof Error ? e.stack ?? e.message : String(e);
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        component: { type: "string" },
        config: { type: "string" },
        kv: { type: "string" },
      },
    }));
  } catch (e) {
    console.error(`${e.message}\n${USAGE}`);
    return 2;
  }
  if (!values.component || !values.config || !values.kv) {
    console.error(USAGE);
    return 2;
  }
  const dir = resolve(values.component);

  let imports;
  let instantiate;
  try {
    const config = loadConfigStore(values.config);
    const kv = createKeyValue({ file: values.kv });
    // No environment variables or arguments of this process reach the component.
    const wasi = new WASIShim({ sandbox: { env: {}, args: [] } });
    imports = {
      ...wasi.getImportObject(),
      "wasi:keyvalue/store": kv.store,
      "wasi:keyvalue/atomics": kv.atomics,
      "wasi:config/store": config,
    };
  } catch (e) {
    console.error(`node host: cannot set up: ${e instanceof Error ? e.message : describe(e)}`);
    return 2;
  }
  try {
    // jco writes ES modules with a .js extension: without a package.json saying so,
    // Node would take them for CommonJS where an enclosing package.json says that.
    const marker = join(dir, "package.json");
    if (!existsSync(marker)) writeFileSync(marker, '{ "type": "module" }\n');
    ({ instantiate } = await import(pathToFileURL(join(dir, "mssp_guest.js")).href));
  } catch (e) {
    console.error(
      `node host: cannot load ${dir}/mssp_guest.js (jco transpile --instantiation async output): ${describe(e)}`,
    );
    return 2;
  }

  let component;
  try {
    component = await instantiate(
      (name) => readFile(join(dir, name)).then((bytes) => WebAssembly.compile(bytes)),
      imports,
    );
  } catch (e) {
    console.error(`node host: cannot instantiate the component: ${describe(e)}`);
    return 2;
  }

  const timestamp = BigInt(Math.floor(Date.now() / 1000));
  try {
    component.handleCronEvent({ timestamp });
  } catch (e) {
    console.error(`node host: tick failed: ${describe(e)}`);
    return 1;
  }
  console.error("node host: tick done");
  return 0;
}

// Exit explicitly: the shim's I/O worker thread (and its keep-alive connections)
// would otherwise keep the process alive.
main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`node host: ${describe(e)}`);
    process.exit(2);
  },
);
