// A Node.js processor: counts the words and characters of each line of text.
// Reads one JSON request per line on stdin, writes one JSON reply per line on stdout.
const readline = require("node:readline");

const config = JSON.parse(process.env.ELASTICCODE_CONFIG || "{}");
console.error(`measure.js started (pid ${process.pid}), config ${JSON.stringify(config)}`);

const lines = readline.createInterface({ input: process.stdin, terminal: false });
lines.on("line", (line) => {
  const request = JSON.parse(line);
  const text = String(request.payload).replace(/^\S+\s/, ""); // drop the quote mark
  const words = text.split(/\s+/).filter(Boolean);
  let reply;
  if (words.length === 0) {
    reply = { outputs: [{ port: "failure", payload: { line: request.payload, why: "no words" } }] };
  } else {
    const longest = words.reduce((a, b) => (b.length > a.length ? b : a));
    reply = { outputs: [{ payload: { text, words: words.length, chars: text.length, longest } }] };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
