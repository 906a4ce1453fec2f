package proxy

import (
	"bytes"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsgate/wsgate/wsrelay"
)

// waitSessions waits until the registry lists n sessions and returns
// them: the handler registers a session right after the 101 is written,
// so a client may see its 101 first.
func waitSessions(t testing.TB, reg *wsrelay.Registry, n int) []wsrelay.Info {
	t.Helper()
	var list []wsrelay.Info
	waitFor(t, fmt.Sprintf("%d sessions listed", n), hangGuard, func() bool {
		list = reg.Sessions(wsrelay.Filter{})
		return len(list) == n
	})
	return list
}

// logLineOf waits for the log line with message msg of session id and
// returns it.
func logLineOf(t testing.TB, p *testProxy, msg, id string) string {
	t.Helper()
	re := regexp.MustCompile(`msg="` + msg + `" .*\bsession=` + regexp.QuoteMeta(id) + `( |$)`)
	var line string
	waitFor(t, fmt.Sprintf("the %q line of session %s", msg, id), hangGuard, func() bool {
		for l := range strings.Lines(p.logs.String()) {
			if re.MatchString(strings.TrimSuffix(l, "\n")) {
				line = l
				return true
			}
		}
		return false
	})
	return line
}

// readText reads the next message on c and checks that it is the text
// (or binary) message want.
func readText(t testing.TB, c *websocket.Conn, typ int, want string) {
	t.Helper()
	gotTyp, got, err := c.ReadMessage()
	if err != nil || gotTyp != typ || string(got) != want {
		t.Fatalf("ReadMessage() = %d, %q, %v; want %d, %q", gotTyp, got, err, typ, want)
	}
}

// TestRegistrySessions: a WebSocket session through the proxy is listed
// in the handler's registry with its route, upstream, target, client and
// subprotocol; its counters follow the echoes; Send and Broadcast reach
// the client between two echoes; Close reaches it as its code and reason;
// the ended session is in the recent closes and the route's stats, and
// its log lines carry its id.
func TestRegistrySessions(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), wsRoute(up))
	reg := p.h.Registry()
	c, _ := dialWS(t, p.addr, "/chat", http.Header{"Sec-WebSocket-Protocol": {"chat.v1, chat.v2"}})
	c.SetReadDeadline(time.Now().Add(hangGuard))

	in := waitSessions(t, reg, 1)[0]
	id := in.ID
	want := wsrelay.Info{
		ID: id, Route: "test", Upstream: up.Name, Target: "http://" + backend, Client: c.LocalAddr().String(),
		Subprotocol: "chat.v2", Started: in.Started, LastActive: in.LastActive,
	}
	if in != want || in.Started.IsZero() {
		t.Errorf("Sessions() = %+v\nwant %+v", in, want)
	}
	for _, tc := range []struct {
		f    wsrelay.Filter
		want int
	}{
		{wsrelay.Filter{Route: "test"}, 1},
		{wsrelay.Filter{Upstream: up.Name}, 1},
		{wsrelay.Filter{Target: "http://" + backend}, 1},
		{wsrelay.Filter{Client: "127.0.0.1"}, 1},
		{wsrelay.Filter{Client: c.LocalAddr().String()}, 1},
		{wsrelay.Filter{Route: "other"}, 0},
		{wsrelay.Filter{Client: "10.0.0.1"}, 0},
	} {
		if got := reg.Sessions(tc.f); len(got) != tc.want {
			t.Errorf("Sessions(%+v) lists %d sessions, want %d", tc.f, len(got), tc.want)
		}
	}

	// Echoes: the counters follow, both ways.
	var sent wsrelay.Flow
	echo := func(msg string) {
		t.Helper()
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		readText(t, c, websocket.TextMessage, msg)
		sent.Messages++
		sent.Bytes += int64(len(msg))
	}
	counted := func(injected int64) {
		t.Helper()
		waitFor(t, "the counters to follow", hangGuard, func() bool {
			in, ok := reg.Get(id)
			return ok && in.FromClient == sent && in.FromBackend == sent && in.Injected == injected
		})
	}
	for _, msg := range []string{"one", "two", strings.Repeat("3", 300)} {
		echo(msg)
	}
	counted(0)

	// Send and Broadcast, between two echoes.
	if err := reg.Send(id, false, []byte("from admin")); err != nil {
		t.Fatalf("Send(%q) = %v, want nil", id, err)
	}
	readText(t, c, websocket.TextMessage, "from admin")
	echo("four")
	if n := reg.Broadcast("test", true, []byte{1, 2, 3}); n != 1 {
		t.Errorf("Broadcast(%q) = %d, want 1", "test", n)
	}
	readText(t, c, websocket.BinaryMessage, "\x01\x02\x03")
	echo("five")
	counted(2)

	// Close: the client gets the code and reason; its echo and the
	// backend's answer end the session.
	if err := reg.Close(id, 4000, "admin"); err != nil {
		t.Fatalf("Close(%q, 4000, %q) = %v, want nil", id, "admin", err)
	}
	if code, text := closeCode(readUntilError(c)); code != 4000 || text != "admin" {
		t.Errorf("client got close %d %q, want 4000 %q", code, text, "admin")
	}
	waitFor(t, "the session to end", hangGuard, func() bool {
		_, ok := reg.Get(id)
		return !ok
	})
	if err := reg.Close(id, 4000, "admin"); err != wsrelay.ErrNotFound {
		t.Errorf("Close(%q) after the end = %v, want %v", id, err, wsrelay.ErrNotFound)
	}
	closes := reg.Closes()
	if len(closes) != 1 {
		t.Fatalf("Closes() has %d entries, want 1", len(closes))
	}
	got := closes[0]
	got.Started, got.Ended = time.Time{}, time.Time{}
	wantClosed := wsrelay.Closed{
		ID: id, Route: "test", Upstream: up.Name, Target: "http://" + backend, Client: c.LocalAddr().String(),
		ClientCode: 4000, BackendCode: 1001, ClosedBy: "wsgate", Reason: "admin", FromClient: sent, FromBackend: sent,
	}
	if got != wantClosed {
		t.Errorf("Closes()[0] = %+v\nwant %+v", got, wantClosed)
	}
	var st *wsrelay.RouteStats
	for _, s := range reg.Stats() {
		if s.Route == "test" && s.Upstream == up.Name {
			st = &s
		}
	}
	if st == nil {
		t.Fatalf("Stats() has no route test/%s", up.Name)
	}
	if wantEnded := map[wsrelay.EndKey]int64{{Code: 4000, By: "wsgate"}: 1}; st.Open != 0 || st.Opened != 1 ||
		!maps.Equal(st.Ended, wantEnded) || st.FromClient.Messages != sent.Messages || st.FromBackend.Bytes != sent.Bytes {
		t.Errorf("Stats() for the route = %+v, want 1 opened, 0 open, ended %v, %d messages of %d bytes each way",
			*st, wantEnded, sent.Messages, sent.Bytes)
	}

	logLineOf(t, p, "websocket opened", id)
	line := logLineOf(t, p, "websocket closed", id)
	for key, want := range map[string]int64{"client_close": 4000, "backend_close": 1001, "client_messages": sent.Messages} {
		if got := logInt(line, key); got != want {
			t.Errorf("%s = %d, want %d in %q", key, got, want, line)
		}
	}
}

// TestRegistrySessionsTwoClients: two sessions on one route are listed in
// the order they started and told apart by the client's full address;
// Send reaches only its own client, Broadcast both.
func TestRegistrySessionsTwoClients(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
	reg := p.h.Registry()
	first, _ := dialWS(t, p.addr, "/", nil)
	waitSessions(t, reg, 1)
	second, _ := dialWS(t, p.addr, "/", nil)
	list := waitSessions(t, reg, 2)
	conns := []*websocket.Conn{first, second}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(hangGuard))
		if list[i].Client != c.LocalAddr().String() || list[i].Subprotocol != "" {
			t.Errorf("Sessions()[%d] = client %s subprotocol %q, want client %s (in start order), no subprotocol",
				i, list[i].Client, list[i].Subprotocol, c.LocalAddr())
		}
		if got := reg.Sessions(wsrelay.Filter{Client: c.LocalAddr().String()}); len(got) != 1 || got[0].ID != list[i].ID {
			t.Errorf("Sessions(client %s) = %+v, want session %s alone", c.LocalAddr(), got, list[i].ID)
		}
	}
	// An echo first: the session is listed from the 101 on, but Send
	// reaches its client only once the hijack handler has started it.
	for i, c := range conns {
		echoed := bytes.Repeat([]byte{byte('a' + i)}, 10)
		if err := c.WriteMessage(websocket.TextMessage, echoed); err != nil {
			t.Fatal(err)
		}
		readText(t, c, websocket.TextMessage, string(echoed))
	}
	for i, c := range conns {
		msg := fmt.Sprintf("to client %d", i)
		if err := reg.Send(list[i].ID, false, []byte(msg)); err != nil {
			t.Fatalf("Send(%q) = %v, want nil", list[i].ID, err)
		}
		readText(t, c, websocket.TextMessage, msg) // the first it got: not the other's
	}
	if n := reg.Broadcast("test", false, []byte("to all")); n != 2 {
		t.Errorf("Broadcast(%q) = %d, want 2", "test", n)
	}
	for _, c := range conns {
		readText(t, c, websocket.TextMessage, "to all")
	}
}
