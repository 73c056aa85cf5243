// The Node.js `consul` client (v2), unchanged, against an agent with ACLs on.
// Usage: node acl.js PORT SERVICE MANAGEMENT_TOKEN. Prints one JSON line of
// observations; the pytest wrapper asserts on them.
const Consul = require("consul");

async function outcome(promise) {
  try {
    await promise;
    return "ok";
  } catch (err) {
    const body = err.response && err.response.body;
    return `${err.statusCode || "?"} ${typeof body === "string" ? body : err.message}`;
  }
}

async function main() {
  const [port, name, management] = process.argv.slice(2);
  const admin = new Consul({ host: "127.0.0.1", port: Number(port), defaults: { token: management } });
  const anonymous = new Consul({ host: "127.0.0.1", port: Number(port) });
  const out = {};
  out.anonymous = await outcome(anonymous.agent.service.register({ name, port: 3000 }));
  out.bootstrapAgain = await outcome(anonymous.acl.bootstrap());
  out.admin = await outcome(admin.agent.service.register({ name, port: 3000 }));
  out.perCall = await outcome(anonymous.agent.service.deregister({ id: name, token: management }));
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
