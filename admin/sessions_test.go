package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/wsgate/wsgate/wsrelay"
)

func TestListSessions(t *testing.T) {
	fs := newFakeSessions()
	srv := serve(t, New(testOptions(fs)))

	tests := []struct {
		name       string
		query      string
		wantIDs    []string
		wantTotal  int
		wantOffset int
		wantLimit  int
		wantFilter wsrelay.Filter
	}{
		{"all", "", []string{"a", "b", "c"}, 3, 0, 100, wsrelay.Filter{}},
		{"route", "?route=chat", []string{"a", "b"}, 2, 0, 100, wsrelay.Filter{Route: "chat"}},
		{"upstream", "?upstream=feed", []string{"c"}, 1, 0, 100, wsrelay.Filter{Upstream: "feed"}},
		{"target", "?target=" + url.QueryEscape("ws://10.0.0.2:8080"), []string{"b"}, 1, 0, 100, wsrelay.Filter{Target: "ws://10.0.0.2:8080"}},
		{"client host", "?client=192.0.2.1", []string{"a", "c"}, 2, 0, 100, wsrelay.Filter{Client: "192.0.2.1"}},
		{"client address", "?client=192.0.2.1:5002", []string{"c"}, 1, 0, 100, wsrelay.Filter{Client: "192.0.2.1:5002"}},
		{"all filters", "?route=chat&upstream=chat&target=x&client=y", []string{}, 0, 0, 100,
			wsrelay.Filter{Route: "chat", Upstream: "chat", Target: "x", Client: "y"}},
		{"no match", "?route=nope", []string{}, 0, 0, 100, wsrelay.Filter{Route: "nope"}},
		{"limit", "?limit=2", []string{"a", "b"}, 3, 0, 2, wsrelay.Filter{}},
		{"offset", "?offset=1", []string{"b", "c"}, 3, 1, 100, wsrelay.Filter{}},
		{"offset and limit", "?offset=1&limit=1", []string{"b"}, 3, 1, 1, wsrelay.Filter{}},
		{"offset at the end", "?offset=3", []string{}, 3, 3, 100, wsrelay.Filter{}},
		{"offset past the end", "?offset=50", []string{}, 3, 50, 100, wsrelay.Filter{}},
		{"largest limit", "?limit=1000", []string{"a", "b", "c"}, 3, 0, 1000, wsrelay.Filter{}},
		{"explicit zero offset", "?offset=0", []string{"a", "b", "c"}, 3, 0, 100, wsrelay.Filter{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, srv, "GET", "/api/sessions"+tt.query, nil)
			if r.status != 200 {
				t.Fatalf("status %d, want 200 (body %s)", r.status, r.body)
			}
			var page struct {
				Sessions *[]wsrelay.Info `json:"sessions"`
				Total    int             `json:"total"`
				Offset   int             `json:"offset"`
				Limit    int             `json:"limit"`
			}
			if err := json.Unmarshal(r.body, &page); err != nil {
				t.Fatal(err)
			}
			if page.Sessions == nil {
				t.Fatalf("body %s: sessions missing or null", r.body)
			}
			ids := []string{}
			for _, s := range *page.Sessions {
				ids = append(ids, s.ID)
			}
			if fmt.Sprint(ids) != fmt.Sprint(tt.wantIDs) || page.Total != tt.wantTotal ||
				page.Offset != tt.wantOffset || page.Limit != tt.wantLimit {
				t.Errorf("GET /api/sessions%s = ids %v total %d offset %d limit %d, want %v %d %d %d",
					tt.query, ids, page.Total, page.Offset, page.Limit, tt.wantIDs, tt.wantTotal, tt.wantOffset, tt.wantLimit)
			}
			if got := fs.lastFilter(); got != tt.wantFilter {
				t.Errorf("filter %+v, want %+v", got, tt.wantFilter)
			}
		})
	}

	t.Run("body", func(t *testing.T) {
		want, _ := json.Marshal(map[string]any{"sessions": []wsrelay.Info{fs.infos[2]}, "total": 1, "offset": 0, "limit": 100})
		wantJSON(t, do(t, srv, "GET", "/api/sessions?route=feed", nil), 200, string(want))
	})
}

func TestListSessionsBadPaging(t *testing.T) {
	srv := serve(t, New(testOptions(newFakeSessions())))
	for _, q := range []string{
		"limit=0", "limit=-1", "limit=1001", "limit=abc", "limit=1.5", "limit=1e3", "limit=%20",
		"offset=-1", "offset=x", "offset=1.0", "offset=99999999999999999999999",
	} {
		t.Run(q, func(t *testing.T) {
			msg := wantError(t, do(t, srv, "GET", "/api/sessions?"+q, nil), 400)
			name, _, _ := strings.Cut(q, "=")
			if !strings.Contains(msg, name) {
				t.Errorf("error %q does not name %s", msg, name)
			}
		})
	}
}

func TestGetSession(t *testing.T) {
	fs := newFakeSessions()
	srv := serve(t, New(testOptions(fs)))
	t.Run("known", func(t *testing.T) {
		want, _ := json.Marshal(fs.infos[0])
		wantJSON(t, do(t, srv, "GET", "/api/sessions/a", nil), 200, string(want))
		if !strings.Contains(string(want), `"from_client":{"messages":3,"bytes":30}`) {
			t.Errorf("Info JSON %s lacks the counters", want)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		wantJSON(t, do(t, srv, "GET", "/api/sessions/zz", nil), 404, `{"error":"no such session \"zz\""}`)
	})
	t.Run("escaped id", func(t *testing.T) {
		wantJSON(t, do(t, srv, "GET", "/api/sessions/a%2Fb", nil), 404, `{"error":"no such session \"a/b\""}`)
	})
}

func TestCloseSession(t *testing.T) {
	tests := []struct {
		name   string
		path   string
		status int
		body   string
		want   *closeCall // the call the registry must get
	}{
		{"default code", "/api/sessions/a", 202, `{"closed":"a"}`, &closeCall{"a", 1000, ""}},
		{"code and reason", "/api/sessions/a?code=4000&reason=closed%20from%20dashboard", 202, `{"closed":"a"}`,
			&closeCall{"a", 4000, "closed from dashboard"}},
		{"going away", "/api/sessions/b?code=1001", 202, `{"closed":"b"}`, &closeCall{"b", 1001, ""}},
		{"longest reason", "/api/sessions/a?reason=" + strings.Repeat("r", 123), 202, `{"closed":"a"}`,
			&closeCall{"a", 1000, strings.Repeat("r", 123)}},
		{"unknown", "/api/sessions/zz", 404, `{"error":"no such session \"zz\""}`, nil},
		{"closing", "/api/sessions/c", 409, `{"error":"session \"c\" is closing"}`, nil},
		{"other error", "/api/sessions/boom", 500, `{"error":"close session \"boom\": disk on fire"}`, nil},
		{"bad code", "/api/sessions/a?code=1005", 400,
			`{"error":"close code 1005 not allowed: want 1000, 1001, 1008, 1011, 1012, 1013 or 3000-4999"}`, nil},
		{"code not a number", "/api/sessions/a?code=abc", 400,
			`{"error":"invalid close code \"abc\": want 1000, 1001, 1008, 1011, 1012, 1013 or 3000-4999"}`, nil},
		{"empty code means default", "/api/sessions/a?code=", 202, `{"closed":"a"}`, &closeCall{"a", 1000, ""}},
		{"long reason", "/api/sessions/a?reason=" + strings.Repeat("r", 124), 400,
			`{"error":"close reason is 124 bytes, more than 123"}`, nil},
		{"long multibyte reason", "/api/sessions/a?reason=" + strings.Repeat("%C3%A9", 62), 400,
			`{"error":"close reason is 124 bytes, more than 123"}`, nil},
		{"invalid UTF-8 reason", "/api/sessions/a?reason=%FF", 400, `{"error":"close reason is not valid UTF-8"}`, nil},
		{"bad code checked before the id", "/api/sessions/zz?code=1", 400,
			`{"error":"close code 1 not allowed: want 1000, 1001, 1008, 1011, 1012, 1013 or 3000-4999"}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeSessions()
			srv := serve(t, New(testOptions(fs)))
			wantJSON(t, do(t, srv, "DELETE", tt.path, nil), tt.status, tt.body)
			closes, _, _ := fs.calls()
			switch {
			case tt.want == nil && len(closes) != 0:
				t.Errorf("registry closed %+v, want nothing", closes)
			case tt.want != nil && (len(closes) != 1 || closes[0] != *tt.want):
				t.Errorf("registry closed %+v, want %+v", closes, *tt.want)
			}
		})
	}
}

func TestParseCloseCode(t *testing.T) {
	tests := []struct {
		in   string
		want uint16 // 0: an error
	}{
		{"", 1000},
		{"1000", 1000},
		{"1001", 1001},
		{"1008", 1008},
		{"1011", 1011},
		{"1012", 1012},
		{"1013", 1013},
		{"3000", 3000},
		{"4000", 4000},
		{"4999", 4999},
		{"04000", 4000},
		{"0", 0},
		{"999", 0},
		{"1002", 0},
		{"1003", 0},
		{"1004", 0},
		{"1005", 0},
		{"1006", 0},
		{"1007", 0},
		{"1009", 0},
		{"1010", 0},
		{"1014", 0},
		{"1015", 0},
		{"1016", 0},
		{"2999", 0},
		{"5000", 0},
		{"65535", 0},
		{"65536", 0},
		{"-1", 0},
		{"+4000", 0},
		{" 4000", 0},
		{"4000 ", 0},
		{"4000.0", 0},
		{"0x0fa0", 0},
		{"abc", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseCloseCode(tt.in)
			switch {
			case tt.want == 0 && err == nil:
				t.Errorf("parseCloseCode(%q) = %d, want an error", tt.in, got)
			case tt.want != 0 && (err != nil || got != tt.want):
				t.Errorf("parseCloseCode(%q) = %d, %v, want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestCheckReason(t *testing.T) {
	tests := []struct {
		name   string
		reason string
		ok     bool
	}{
		{"empty", "", true},
		{"short", "maintenance", true},
		{"123 bytes", strings.Repeat("x", 123), true},
		{"124 bytes", strings.Repeat("x", 124), false},
		{"123 bytes multibyte", strings.Repeat("é", 61) + "x", true},
		{"124 bytes multibyte", strings.Repeat("é", 62), false},
		{"invalid UTF-8", "a\xffb", false},
		{"cut rune", "\xc3", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := checkReason(tt.reason); (err == nil) != tt.ok {
				t.Errorf("checkReason(%q) = %v, want ok %v", tt.reason, err, tt.ok)
			}
		})
	}
}

// bodyOf returns a body of n bytes, with an unknown length when chunked
// (so the server cannot refuse it from Content-Length).
func bodyOf(n int, chunked bool) io.Reader {
	b := bytes.Repeat([]byte("x"), n)
	if chunked {
		return io.MultiReader(bytes.NewReader(b))
	}
	return bytes.NewReader(b)
}

func TestSendMessage(t *testing.T) {
	tests := []struct {
		name   string
		path   string
		body   io.Reader
		status int
		body0  string // the answer
		want   *sendCall
	}{
		{"text", "/api/sessions/a/messages", strings.NewReader("héllo"), 200, `{"sent":true}`,
			&sendCall{"a", false, []byte("héllo")}},
		{"binary", "/api/sessions/a/messages?binary=1", strings.NewReader("\xff\x00"), 200, `{"sent":true}`,
			&sendCall{"a", true, []byte("\xff\x00")}},
		{"binary=true", "/api/sessions/a/messages?binary=true", strings.NewReader("x"), 200, `{"sent":true}`,
			&sendCall{"a", true, []byte("x")}},
		{"binary=0 is text", "/api/sessions/a/messages?binary=0", strings.NewReader("x"), 200, `{"sent":true}`,
			&sendCall{"a", false, []byte("x")}},
		{"empty message", "/api/sessions/a/messages", nil, 200, `{"sent":true}`, &sendCall{"a", false, []byte{}}},
		{"1 MiB", "/api/sessions/a/messages", bodyOf(1<<20, false), 200, `{"sent":true}`,
			&sendCall{"a", false, bytes.Repeat([]byte("x"), 1<<20)}},
		{"1 MiB chunked", "/api/sessions/a/messages", bodyOf(1<<20, true), 200, `{"sent":true}`,
			&sendCall{"a", false, bytes.Repeat([]byte("x"), 1<<20)}},
		{"too big", "/api/sessions/a/messages", bodyOf(1<<20+1, false), 413,
			`{"error":"message is 1048577 bytes, more than 1048576"}`, nil},
		{"too big chunked", "/api/sessions/a/messages", bodyOf(1<<20+1, true), 413,
			`{"error":"message is more than 1048576 bytes"}`, nil},
		{"invalid UTF-8 text", "/api/sessions/a/messages", strings.NewReader("a\xffb"), 400,
			`{"error":"text message is not valid UTF-8 (send binary with ?binary=1)"}`, nil},
		{"bad binary flag", "/api/sessions/a/messages?binary=yes", strings.NewReader("x"), 400,
			`{"error":"invalid binary \"yes\": want 1 or 0"}`, nil},
		{"unknown", "/api/sessions/zz/messages", strings.NewReader("x"), 404, `{"error":"no such session \"zz\""}`, nil},
		{"closing", "/api/sessions/c/messages", strings.NewReader("x"), 409, `{"error":"session \"c\" is closing"}`, nil},
		{"too big for the session", "/api/sessions/big/messages", strings.NewReader("x"), 413,
			fmt.Sprintf(`{"error":"send to session \"big\": %s"}`, wsrelay.ErrTooBig), nil},
		{"busy", "/api/sessions/busy/messages", strings.NewReader("x"), 503,
			fmt.Sprintf(`{"error":"send to session \"busy\": %s"}`, wsrelay.ErrBusy), nil},
		{"other error", "/api/sessions/boom/messages", strings.NewReader("x"), 500,
			`{"error":"send to session \"boom\": disk on fire"}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeSessions()
			srv := serve(t, New(testOptions(fs)))
			wantJSON(t, do(t, srv, "POST", tt.path, tt.body), tt.status, tt.body0)
			_, sends, _ := fs.calls()
			switch {
			case tt.want == nil && len(sends) != 0:
				t.Errorf("registry sent %d messages, want none", len(sends))
			case tt.want != nil && (len(sends) != 1 || sends[0].id != tt.want.id || sends[0].binary != tt.want.binary ||
				!bytes.Equal(sends[0].msg, tt.want.msg)):
				t.Errorf("registry sent %d messages (first %+.40v), want %+.40v", len(sends), sends, *tt.want)
			}
		})
	}
}

func TestBroadcast(t *testing.T) {
	tests := []struct {
		name   string
		path   string
		body   io.Reader
		status int
		answer string
		want   *sendCall
	}{
		{"text", "/api/routes/chat/broadcast", strings.NewReader("hello all"), 200, `{"route":"chat","sent":2}`,
			&sendCall{"chat", false, []byte("hello all")}},
		{"binary", "/api/routes/feed/broadcast?binary=1", strings.NewReader("\x00\xff"), 200, `{"route":"feed","sent":1}`,
			&sendCall{"feed", true, []byte("\x00\xff")}},
		{"unknown route", "/api/routes/nope/broadcast", strings.NewReader("x"), 404, `{"error":"no such route \"nope\""}`, nil},
		{"invalid UTF-8", "/api/routes/chat/broadcast", strings.NewReader("\xff"), 400,
			`{"error":"text message is not valid UTF-8 (send binary with ?binary=1)"}`, nil},
		{"too big", "/api/routes/chat/broadcast", bodyOf(1<<20+1, true), 413, `{"error":"message is more than 1048576 bytes"}`, nil},
		{"bad binary flag", "/api/routes/chat/broadcast?binary=2", strings.NewReader("x"), 400,
			`{"error":"invalid binary \"2\": want 1 or 0"}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeSessions()
			srv := serve(t, New(testOptions(fs)))
			wantJSON(t, do(t, srv, "POST", tt.path, tt.body), tt.status, tt.answer)
			_, _, casts := fs.calls()
			switch {
			case tt.want == nil && len(casts) != 0:
				t.Errorf("registry broadcast %+v, want nothing", casts)
			case tt.want != nil && (len(casts) != 1 || casts[0].id != tt.want.id || casts[0].binary != tt.want.binary ||
				!bytes.Equal(casts[0].msg, tt.want.msg)):
				t.Errorf("registry broadcast %+v, want %+v", casts, *tt.want)
			}
		})
	}
}

func TestSessionMethods(t *testing.T) {
	srv := serve(t, New(testOptions(newFakeSessions())))
	tests := []struct {
		method, path, allow string
	}{
		{"POST", "/api/sessions/a", "DELETE, GET, HEAD"},
		{"PATCH", "/api/sessions/a", "DELETE, GET, HEAD"},
		{"PUT", "/api/sessions/a/messages", "POST"},
		{"DELETE", "/api/routes/chat/broadcast", "POST"},
		{"DELETE", "/api/sessions", "GET, HEAD"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := do(t, srv, tt.method, tt.path, nil)
			wantError(t, r, http.StatusMethodNotAllowed)
			if got := r.header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
}
