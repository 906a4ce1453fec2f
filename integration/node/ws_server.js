// A WebSocket backend for wsgate's integration tests, built on the ws
// library (https://github.com/websockets/ws). It listens on 127.0.0.1:0,
// prints {"port": N} first, then one JSON line per event of each
// connection:
//
//   {"conn": 1, "event": "open", "path": "/x"}
//   {"conn": 1, "event": "ping", "data": "<hex>"}   (ws answers it itself)
//   {"conn": 1, "event": "pong", "data": "<hex>"}
//   {"conn": 1, "event": "message", "text": "..."}
//   {"conn": 1, "event": "close", "code": 1001, "reason": "..."}
//
// It echoes every message. On the text message "ping-me" it also sends a
// ping of its own with the payload "backend-own" before the echo.
'use strict';

const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
let next = 0;

function report(o) {
  process.stdout.write(JSON.stringify(o) + '\n');
}

wss.on('listening', () => report({ port: wss.address().port }));

wss.on('connection', (ws, req) => {
  const conn = ++next;
  report({ conn, event: 'open', path: req.url });
  ws.on('ping', (data) => report({ conn, event: 'ping', data: data.toString('hex') }));
  ws.on('pong', (data) => report({ conn, event: 'pong', data: data.toString('hex') }));
  ws.on('message', (data, isBinary) => {
    const text = isBinary ? null : data.toString('utf8');
    report({ conn, event: 'message', text, binary: isBinary, length: data.length });
    if (text === 'ping-me') {
      ws.ping(Buffer.from('backend-own'));
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code, reason) => report({ conn, event: 'close', code, reason: reason.toString('utf8') }));
  ws.on('error', (err) => report({ conn, event: 'error', error: String(err) }));
});

// The test kills this process when it ends; stdin closing ends it too.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
