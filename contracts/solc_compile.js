// Standard-JSON bridge to the pinned npm solc: reads the compiler input on stdin, writes the
// compiler output on stdout. Used by contracts/build.py; takes no file-system imports (all
// sources are passed inline), so the output depends on the input and the compiler only.
"use strict";

const solc = require("solc");

const expected = process.argv[2];
const version = solc.version();
if (expected && !version.startsWith(expected + "+")) {
  process.stderr.write(`solc ${version} is installed, ${expected} is pinned: run npm ci\n`);
  process.exit(2);
}

const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const input = Buffer.concat(chunks).toString("utf8");
  process.stdout.write(solc.compile(input));
});
