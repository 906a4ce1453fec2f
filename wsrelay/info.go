package wsrelay

import (
	"errors"
	"time"
)

// Info is a snapshot of one live session, as the admin API shows it.
type Info struct {
	// ID is the session's id: short, unique in the process, also in
	// the session's log lines.
	ID string `json:"id"`
	// Route and Upstream are the names from the config (Route is ""
	// for a route the config did not name); Target is the backend URL
	// dialled.
	Route    string `json:"route"`
	Upstream string `json:"upstream"`
	Target   string `json:"target"`
	// Client is the client's address: the TCP peer (behind a load
	// balancer, the balancer's address).
	Client      string    `json:"client"`
	Subprotocol string    `json:"subprotocol,omitempty"`
	Started     time.Time `json:"started"`
	// LastActive is when the last frame passed, either way.
	LastActive time.Time `json:"last_active"`
	// Closing is true once the closing handshake has started.
	Closing bool `json:"closing"`
	// FromClient counts what the client sent (and wsgate relayed to the
	// backend); FromBackend what the backend sent.
	FromClient  Flow `json:"from_client"`
	FromBackend Flow `json:"from_backend"`
	// Injected counts the messages the admin API sent to the client.
	Injected int64 `json:"injected"`
}

// Flow counts the data messages and their payload bytes of one direction.
type Flow struct {
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
}

// Filter selects sessions for [Registry.Sessions]; empty fields match all.
type Filter struct {
	Route    string
	Upstream string
	Target   string
	// Client matches the client address exactly, or its host (IP)
	// without the port.
	Client string
}

// Errors of the operations on one session.
var (
	// ErrNotFound: no live session has that id.
	ErrNotFound = errors.New("no such session")
	// ErrClosing: the session's closing handshake has started; nothing
	// more can be sent on it.
	ErrClosing = errors.New("session is closing")
	// ErrTooBig: a message to send exceeds MaxSend, or a text message
	// is not UTF-8.
	ErrTooBig = errors.New("message too big or not UTF-8")
	// ErrBusy: for the whole write timeout the session did not start,
	// or its backend was in the middle of a fragmented message or a
	// large frame.
	ErrBusy = errors.New("session busy with a fragmented message")
)

// Closed describes a session that ended, for the recent-closes list.
type Closed struct {
	ID       string    `json:"id"`
	Route    string    `json:"route"`
	Upstream string    `json:"upstream"`
	Target   string    `json:"target"`
	Client   string    `json:"client"`
	Started  time.Time `json:"started"`
	Ended    time.Time `json:"ended"`
	// ClientCode and BackendCode are the close codes each side sent (0:
	// none, the connection ended without a close frame).
	ClientCode  uint16 `json:"client_code"`
	BackendCode uint16 `json:"backend_code"`
	// ClosedBy is who closed first: "client", "backend" or "wsgate"
	// (idle timeout, drain, reload, the admin API, a protocol error).
	ClosedBy string `json:"closed_by"`
	// Reason is wsgate's reason when it closed first ("idle timeout",
	// "going away", "admin", …), else the first closer's close reason.
	Reason      string `json:"reason,omitempty"`
	FromClient  Flow   `json:"from_client"`
	FromBackend Flow   `json:"from_backend"`
}
