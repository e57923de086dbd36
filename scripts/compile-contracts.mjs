// Compile the test contracts with solc-js into one artifacts file: {name: {abi, bytecode}}.
//
//   node scripts/compile-contracts.mjs OUT.json
//
// Inputs: every .sol file under contracts/ (the project's own), Chainlink's MockV3Aggregator
// from the sources unpacked into build/chain/chainlink/ by scripts/chain-setup.sh, and Pyth's
// MockPyth from node_modules. Imports are resolved from those folders only; nothing is fetched.
// Output is deterministic for the same inputs and settings, so the caller caches it by hash.
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const out = process.argv[2];
if (!out) {
  console.error("usage: node scripts/compile-contracts.mjs OUT.json");
  process.exit(2);
}

function solFiles(dir) {
  return readdirSync(dir)
    .sort()
    .flatMap((name) => {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) return solFiles(path);
      return name.endsWith(".sol") ? [path] : [];
    });
}

// Source unit name -> file; the names are what the artifacts' import paths resolve against.
const entries = new Map();
for (const path of solFiles(join(root, "contracts"))) {
  entries.set(relative(root, path), path);
}
const chainlink = join(root, "build/chain/chainlink/src/v0.8/shared/mocks/MockV3Aggregator.sol");
entries.set("chainlink/shared/mocks/MockV3Aggregator.sol", chainlink);
const pyth = join(root, "node_modules/@pythnetwork/pyth-sdk-solidity/MockPyth.sol");
entries.set("pyth/MockPyth.sol", pyth);

const bases = new Map([
  ["chainlink/", join(root, "build/chain/chainlink/src/v0.8/")],
  ["pyth/", join(root, "node_modules/@pythnetwork/pyth-sdk-solidity/")],
  ["contracts/", join(root, "contracts/")],
]);

function findImports(unit) {
  for (const [prefix, dir] of bases) {
    if (unit.startsWith(prefix)) {
      try {
        return { contents: readFileSync(join(dir, unit.slice(prefix.length)), "utf8") };
      } catch (err) {
        return { error: `cannot read ${unit}: ${err.message}` };
      }
    }
  }
  return { error: `import outside the known folders: ${unit}` };
}

const sources = {};
for (const [unit, path] of entries) sources[unit] = { content: readFileSync(path, "utf8") };

const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "paris",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}

const artifacts = {};
for (const unit of Object.keys(output.contracts).sort()) {
  for (const [name, c] of Object.entries(output.contracts[unit])) {
    if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts
    if (artifacts[name]) {
      console.error(`two contracts named ${name}; rename one`);
      process.exit(1);
    }
    artifacts[name] = { source: unit, abi: c.abi, bytecode: "0x" + c.evm.bytecode.object };
  }
}
writeFileSync(out, JSON.stringify(artifacts, null, 1) + "\n");
console.log(`compiled ${Object.keys(artifacts).length} contracts into ${relative(root, out)}`);
