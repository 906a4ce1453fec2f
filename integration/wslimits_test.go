package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// pyHandshakes is a Python websockets client that tries each handshake
// of its argument (a JSON list of {"subprotocols": [...], "hold": bool})
// in order against one URL and prints one JSON line per try: the status
// of a refusal, or the subprotocol the server chose. Held connections
// stay open until the script ends.
const pyHandshakes = `
import asyncio, json, sys
import websockets

async def main(url, tries):
    held = []
    for t in tries:
        try:
            ws = await websockets.connect(url, subprotocols=t["subprotocols"] or None, open_timeout=20)
        except websockets.exceptions.InvalidStatusCode as e:
            print(json.dumps({"status": e.status_code}), flush=True)
            continue
        except websockets.exceptions.InvalidStatus as e:
            print(json.dumps({"status": e.response.status_code}), flush=True)
            continue
        await ws.send("ping")
        echo = await ws.recv()
        print(json.dumps({"status": 101, "subprotocol": ws.subprotocol, "echo": echo}), flush=True)
        if t["hold"]:
            held.append(ws)
        else:
            await ws.close()
    for ws in held:
        await ws.close()

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
`

type pyTry struct {
	Subprotocols []string `json:"subprotocols"`
	Hold         bool     `json:"hold"`
}

type pyTryResult struct {
	Status      int    `json:"status"`
	Subprotocol string `json:"subprotocol"`
	Echo        string `json:"echo"`
}

// runPyHandshakes runs pyHandshakes and returns its results.
func runPyHandshakes(t *testing.T, url string, tries []pyTry) []pyTryResult {
	t.Helper()
	arg, err := json.Marshal(tries)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", pyHandshakes, url, string(arg)).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("python client: %v\n%s\n%s", err, out, stderr)
	}
	var res []pyTryResult
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r pyTryResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("python client printed %q: %v", line, err)
		}
		res = append(res, r)
	}
	if len(res) != len(tries) {
		t.Fatalf("python client: %d results for %d handshakes:\n%s", len(res), len(tries), out)
	}
	return res
}

// TestSubprotocolAllowListAndSessionCaps: with Python websockets as the
// client, the route's subprotocol allow-list filters the offer (the
// backend supports both protocols, so what it picks shows the filtering)
// and refuses an offer with nothing allowed; max_sessions_per_ip answers
// 429 to a second held session from one address.
func TestSubprotocolAllowListAndSessionCaps(t *testing.T) {
	needPythonWebsockets(t)
	backend := newWSBackend("graphql-ws", "graphql-transport-ws").start(t)
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app: {targets: ["http://%s"]}
routes:
  - name: gql
    match: {path_prefix: /}
    upstream: app
    websocket:
      subprotocols: [graphql-transport-ws]
      max_sessions_per_ip: 1
`, backend))
	res := runPyHandshakes(t, "ws://"+g.Addr+"/graphql", []pyTry{
		// The backend prefers graphql-ws, which the route does not allow.
		{Subprotocols: []string{"graphql-ws", "graphql-transport-ws"}},
		{Subprotocols: []string{"graphql-ws"}},
		{},
		{Subprotocols: []string{"graphql-transport-ws"}, Hold: true},
		{Subprotocols: []string{"graphql-transport-ws"}},
	})
	want := []pyTryResult{
		{Status: 101, Subprotocol: "graphql-transport-ws", Echo: "ping"},
		{Status: 400},
		{Status: 400},
		{Status: 101, Subprotocol: "graphql-transport-ws", Echo: "ping"},
		{Status: 429},
	}
	for i := range want {
		if res[i] != want[i] {
			t.Errorf("handshake %d: %+v, want %+v", i, res[i], want[i])
		}
	}
}
