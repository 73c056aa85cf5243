// The Node.js `consul` client (v2), unchanged: KV, sessions and locks, events
// and transactions against a running waypost agent.
// Usage: node kv.js PORT PREFIX. Prints one JSON line of observations; the
// pytest wrapper asserts on them. Exits non-zero on any client error.
const Consul = require("consul");

async function main() {
  const [port, p] = process.argv.slice(2);
  const consul = new Consul({ host: "127.0.0.1", port: Number(port) });
  const out = {};

  out.set = await consul.kv.set(`${p}/a`, "one");
  await consul.kv.set({ key: `${p}/dir/b`, value: "two", flags: 42 });
  const a = await consul.kv.get(`${p}/a`);
  out.get = [a.Key, a.Value, a.Flags];
  out.flags = (await consul.kv.get(`${p}/dir/b`)).Flags;
  out.keys = await consul.kv.keys({ key: `${p}/`, separator: "/" });
  out.recurse = (await consul.kv.get({ key: `${p}/`, recurse: true })).map((e) => e.Key);
  out.missing = (await consul.kv.get(`${p}/nope`)) === undefined;
  // A refused write answers `false`, which this client hands back as a falsy body.
  out.casStale = (await consul.kv.set({ key: `${p}/a`, value: "x", cas: a.ModifyIndex + 1000 })) === true;
  out.casOk = await consul.kv.set({ key: `${p}/a`, value: "x", cas: a.ModifyIndex });

  // watch(): a KV key; its first answer comes at once, a write fires "change".
  out.watch = await new Promise((resolve, reject) => {
    const seen = [];
    const timer = setTimeout(() => { watch.end(); reject(new Error(`kv watch saw ${seen}`)); }, 15000);
    const watch = consul.watch({ method: consul.kv.get, options: { key: `${p}/w`, wait: "2s" } });
    watch.on("change", (data) => {
      seen.push(data ? data.Value : null);
      if (seen.length === 1) {
        consul.kv.set(`${p}/w`, "woken").catch(reject);
      } else {
        watch.end();
        clearTimeout(timer);
        resolve(seen);
      }
    });
    watch.on("error", (err) => { watch.end(); clearTimeout(timer); reject(err); });
  });

  const s1 = (await consul.session.create({ name: `${p}-1`, ttl: "30s", behavior: "release" })).ID;
  const s2 = (await consul.session.create({ name: `${p}-2`, lockdelay: "0s" })).ID;
  out.info = (await consul.session.info(s1)).Name;
  out.acquire = await consul.kv.set({ key: `${p}/lock`, value: "me", acquire: s1 });
  out.contended = (await consul.kv.set({ key: `${p}/lock`, value: "them", acquire: s2 })) === true;
  out.holder = (await consul.kv.get(`${p}/lock`)).Session === s1;
  out.renew = (await consul.session.renew(s1))[0].ID === s1;
  out.release = await consul.kv.set({ key: `${p}/lock`, value: "free", release: s1 });
  out.nodeSessions = (await consul.session.node(process.argv[4] || "test-node")).length >= 2;
  out.destroy = await consul.session.destroy(s1);
  out.listed = (await consul.session.list()).map((s) => s.ID).filter((id) => id === s1 || id === s2).length;
  await consul.session.destroy(s2);

  const fired = await consul.event.fire(`${p}-deploy`, "v2");
  out.fired = fired.Name;
  out.events = (await consul.event.list({ name: `${p}-deploy` })).map((e) => [e.ID === fired.ID, e.Payload]);

  const txn = await consul.transaction.create([
    { KV: { Verb: "set", Key: `${p}/t`, Value: Buffer.from("tx").toString("base64") } },
    { KV: { Verb: "get", Key: `${p}/a` } },
  ]);
  out.txn = txn.Results.map((r) => r.KV.Key);
  try {
    await consul.transaction.create([
      { KV: { Verb: "set", Key: `${p}/t2`, Value: "" } },
      { KV: { Verb: "check-not-exists", Key: `${p}/t` } },
    ]);
    out.txnConflict = "accepted";
  } catch (err) {
    out.txnConflict = err.statusCode;
  }
  out.t2 = (await consul.kv.get(`${p}/t2`)) === undefined;
  out.del = await consul.kv.del({ key: `${p}/`, recurse: true });
  out.afterDel = (await consul.kv.get({ key: `${p}/`, recurse: true })) === undefined;
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
