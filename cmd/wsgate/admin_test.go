package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/wsgate/wsgate/config"
	"github.com/wsgate/wsgate/proxy"
	"github.com/wsgate/wsgate/routes"
)

// TestApplyAdminNoneToNone: a reload of a config without an admin
// section, when none was running, changes nothing and says so.
func TestApplyAdminNoneToNone(t *testing.T) {
	g := &gateway{log: slog.New(slog.DiscardHandler)}
	g.retireCtx, g.stopRetires = context.WithCancel(context.Background())
	defer g.stopRetires()
	if got := g.applyAdmin(&config.Config{}, nil); got != "" {
		t.Errorf("applyAdmin(none before, none after) = %q, want \"\"", got)
	}
}

// TestAdminListenerClosedQuietly: after a hand-over the old process
// closes its admin listener (the new one serves on its copy); that is
// not a failure to log.
func TestAdminListenerClosedQuietly(t *testing.T) {
	var buf syncBuf
	g := &gateway{log: slog.New(slog.NewTextHandler(&buf, nil))}
	table, err := routes.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	g.handler = proxy.New(proxy.Options{Routes: table})
	cfg := &config.Config{Admin: &config.Admin{Addr: "127.0.0.1:0"}, Table: table}
	a, err := bindAdmin(cfg.Admin, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.cfg = cfg
	g.publish()
	g.serveAdmin(a, cfg)
	_ = a.ln.Close() // what wait does once the new process is ready
	<-a.done
	if s := buf.String(); strings.Contains(s, "admin server failed") {
		t.Errorf("closing the admin listener logged a failure:\n%s", s)
	}
}

// syncBuf is a log destination safe for concurrent writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
