// vscode-jsonrpc as a CLIENT of an ezipc Server (LSP framing over TCP).
//   node client.js PORT   -> prints one JSON object (what happened) on stdout, exits 0
// Resolved through NODE_PATH (tests/interop/conftest.py installs vscode-jsonrpc there).
'use strict';
const net = require('net');
const rpc = require('vscode-jsonrpc/node');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function errorOf(promise) {
  try {
    return { resolved: await promise };
  } catch (e) {
    return { code: e.code, message: e.message, data: e.data === undefined ? null : e.data };
  }
}

async function main(port) {
  const sock = net.connect({ port, host: '127.0.0.1' });
  await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
  const conn = rpc.createMessageConnection(new rpc.SocketMessageReader(sock), new rpc.SocketMessageWriter(sock));
  const out = { progress: [], confirmRequests: [] };

  // What the ezipc server calls back (server -> client).
  conn.onRequest('client/confirm', (params) => {
    out.confirmRequests.push(params);
    return { confirmed: true, question: params.question };
  });
  conn.onNotification('server/progress', (params) => out.progress.push(params));
  conn.listen();

  out.subtractPositional = await conn.sendRequest('subtract', 42, 23);
  out.subtractNamed = await conn.sendRequest('subtract', { subtrahend: 23, minuend: 42 });
  await conn.sendNotification('update', { value: 1 });
  await conn.sendNotification('update', { value: 2 });
  out.updates = await conn.sendRequest('updates');
  out.askClient = await conn.sendRequest('ask_client', { question: 'ready?' });
  out.fail = await errorOf(conn.sendRequest('fail'));
  out.missing = await errorOf(conn.sendRequest('no_such_method', { x: 1 }));
  out.badParams = await errorOf(conn.sendRequest('subtract', { minuend: 1 }));

  // Cancellation: CancellationTokenSource.cancel() sends $/cancelRequest; the request's
  // promise then settles with whatever the server answers (LSP: -32800).
  const source = new rpc.CancellationTokenSource();
  const slow = errorOf(conn.sendRequest('slow', { seconds: 30 }, source.token));
  for (let i = 0; i < 200; i++) {          // until the ezipc handler is running
    if ((await conn.sendRequest('slow_status')).started > 0) break;
    await sleep(10);
  }
  const t0 = Date.now();
  source.cancel();
  out.cancelled = await slow;
  out.cancelMs = Date.now() - t0;
  out.slowStatus = await conn.sendRequest('slow_status');
  out.afterCancel = await conn.sendRequest('subtract', 5, 3);

  conn.dispose();
  sock.destroy();
  return out;
}

main(Number(process.argv[2]))
  .then((out) => { process.stdout.write(JSON.stringify(out) + '\n'); process.exit(0); })
  .catch((e) => { console.error(e && e.stack ? e.stack : e); process.exit(1); });
