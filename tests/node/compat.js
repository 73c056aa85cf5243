// The Node.js `consul` client (v2), unchanged, against a running waypost agent.
// Usage: node compat.js PORT SERVICE. Prints one JSON line of observations;
// the pytest wrapper asserts on them. Exits non-zero on any client error.
const Consul = require("consul");

async function main() {
  const [port, name] = process.argv.slice(2);
  const consul = new Consul({ host: "127.0.0.1", port: Number(port) });
  const out = {};

  await consul.agent.service.register({
    name, id: `${name}-1`, address: "127.0.0.1", port: 3000, tags: ["node"],
    check: { ttl: "30s", status: "passing" },
  });
  out.services = Object.keys(await consul.agent.service.list()).filter((id) => id.startsWith(name));
  out.passing = (await consul.health.service({ service: name, passing: true })).map((e) => e.Service.ID);
  out.catalog = (await consul.catalog.service.nodes(name)).map((e) => [e.ServiceID, e.ServicePort]);

  // watch(): the first call returns at once; a registration fires "change".
  out.watchUpdates = await new Promise((resolve, reject) => {
    const updates = [];
    const timer = setTimeout(() => { watch.end(); reject(new Error(`watch saw only ${updates}`)); }, 15000);
    const watch = consul.watch({
      method: consul.health.service,
      options: { service: name, wait: "2s" },
    });
    watch.on("change", (data) => {
      updates.push(data.length);
      if (updates.length === 1) {
        consul.agent.service.register({ name, id: `${name}-2`, port: 3001 }).catch(reject);
      } else {
        watch.end();
        clearTimeout(timer);
        resolve(updates);
      }
    });
    watch.on("error", (err) => { watch.end(); reject(err); });
  });

  await consul.agent.check.fail({ id: `service:${name}-1`, note: "down" });
  out.afterFail = (await consul.health.service({ service: name, passing: true })).map((e) => e.Service.ID);
  try {
    await consul.agent.service.register({ name, id: `${name}-bad`, port: 70000 });
    out.badRequest = "accepted";
  } catch (err) {
    out.badRequest = `${err.statusCode}: ${err.message}`;
  }
  await consul.agent.service.deregister(`${name}-1`);
  out.leader = await consul.status.leader();
  console.log(JSON.stringify(out));
}

main().catch((err) => { console.error(err); process.exit(1); });
