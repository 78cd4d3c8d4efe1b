// Restate under Keel's workflow benchmark: the load driver (see
// benches/benches/peers/driver.rs). Registers the service's deployment with the server,
// prints "ready"; then each line on stdin holds a count, and it runs that many `steps10`
// invocations from KEEL_PEER_CONCURRENCY concurrent loops (each call waits for the
// handler's result through the ingress and checks it), and answers "done <count>".
//
// Environment: KEEL_PEER_ADMIN_URL, KEEL_PEER_INGRESS_URL, KEEL_PEER_SERVICE_URL,
// KEEL_PEER_CONCURRENCY.
import readline from "node:readline";

const STEPS = 10;
const EXPECTED = (STEPS * (STEPS + 1)) / 2;
const admin = process.env.KEEL_PEER_ADMIN_URL;
const ingress = process.env.KEEL_PEER_INGRESS_URL;
const concurrency = Number(process.env.KEEL_PEER_CONCURRENCY);

async function register() {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      const response = await fetch(`${admin}/deployments`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ uri: process.env.KEEL_PEER_SERVICE_URL }),
      });
      if (response.ok) {
        return;
      }
      if (Date.now() > deadline) {
        throw new Error(`registering the deployment: ${response.status} ${await response.text()}`);
      }
    } catch (error) {
      if (Date.now() > deadline) {
        throw error;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function invoke() {
  const response = await fetch(`${ingress}/bench/steps10`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "null",
  });
  const text = await response.text();
  if (!response.ok || Number(text) !== EXPECTED) {
    throw new Error(`steps10 answered ${response.status} ${text}, not ${EXPECTED}`);
  }
}

async function run(count) {
  let remaining = count;
  const loop = async () => {
    while (remaining > 0) {
      remaining -= 1;
      await invoke();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
}

await register();
console.log("ready");
for await (const line of readline.createInterface({ input: process.stdin })) {
  const count = Number(line);
  await run(count);
  console.log(`done ${count}`);
}
