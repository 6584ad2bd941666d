// vscode-jsonrpc as a SERVER that an ezipc client calls (LSP framing over TCP).
//   node server.js   -> listens on 127.0.0.1 (a free port), prints {"port": N} on stdout,
//                       serves one connection, exits when it closes.
// Resolved through NODE_PATH (tests/interop/conftest.py installs vscode-jsonrpc there).
'use strict';
const net = require('net');
const rpc = require('vscode-jsonrpc/node');

const REQUEST_CANCELLED = -32800;  // LSP's RequestCancelled

function serve(sock) {
  const conn = rpc.createMessageConnection(new rpc.SocketMessageReader(sock), new rpc.SocketMessageWriter(sock));
  const notes = [];
  const slow = { started: 0, cancelled: 0, finished: 0 };

  conn.onRequest('add', (params) => params.a + params.b);          // params by name
  conn.onRequest('subtract', (a, b) => a - b);                      // params by position (spread)
  conn.onNotification('note', (params) => notes.push(params.text));
  conn.onRequest('notes', () => notes);
  conn.onRequest('fail', () => { throw new rpc.ResponseError(4002, 'node says no', { detail: 1 }); });
  // A request that makes a request back to its caller (server -> client), and a notification.
  conn.onRequest('call_back', async (params) => {
    await conn.sendNotification('server/event', { phase: 'before', what: params.what });
    const answer = await conn.sendRequest('client/info', { asked: params.what });
    return { clientSaid: answer };
  });
  conn.onRequest('slow', (params, token) => new Promise((resolve) => {
    slow.started += 1;
    const timer = setTimeout(() => { slow.finished += 1; resolve('finished'); }, params.ms);
    token.onCancellationRequested(() => {
      clearTimeout(timer);
      slow.cancelled += 1;
      resolve(new rpc.ResponseError(REQUEST_CANCELLED, 'cancelled by the client'));
    });
  }));
  conn.onRequest('slow_status', () => slow);
  conn.listen();
  sock.on('close', () => process.exit(0));
}

const server = net.createServer((sock) => { server.close(); serve(sock); });
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
setTimeout(() => { console.error('server.js: no client within 60 s'); process.exit(2); }, 60000).unref();
