// The Node.js `consul` client's watch() across an agent crash: it must keep
// watching through the connection errors and report what the restarted agent
// serves. Usage: node watch_crash.js PORT SERVICE. Prints one JSON line per
// event ({"change": [ids]} or {"error": code}) until killed by the test.
const Consul = require("consul");

const [port, name] = process.argv.slice(2);
const consul = new Consul({ host: "127.0.0.1", port: Number(port) });
const print = (event) => process.stdout.write(JSON.stringify(event) + "\n");

const watch = consul.watch({
  method: consul.health.service,
  options: { service: name, passing: true, wait: "5s" },
  backoffFactor: 50, // retries after 100, 200, 400 ms ...
  backoffMax: 1000,
});
watch.on("change", (data) => print({ change: data.map((e) => e.Service.ID).sort() }));
watch.on("error", (err) => print({ error: err.code || err.message }));
