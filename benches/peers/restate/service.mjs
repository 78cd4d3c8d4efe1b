// Restate under Keel's workflow benchmark: the service, served over HTTP/2 on loopback.
// `bench/steps10` runs 10 trivial durable steps (`ctx.run`): Restate journals each step's
// result before the handler goes on. Usage: node service.mjs <port>
import http2 from "node:http2";
import * as restate from "@restatedev/restate-sdk";

const STEPS = 10;

const bench = restate.service({
  name: "bench",
  handlers: {
    steps10: async (ctx) => {
      let total = 0;
      for (let n = 1; n <= STEPS; n++) {
        total += await ctx.run(`step-${n}`, async () => n);
      }
      return total;
    },
  },
});

const port = Number(process.argv[2]);
http2
  .createServer(restate.endpoint().bind(bench).http2Handler())
  .listen(port, "127.0.0.1");
