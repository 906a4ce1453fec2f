package upstream

// SetStatus is what an upstream is doing now, as the admin API and the
// metrics show it. It is read without locks: each figure is current, the
// whole is not one instant.
type SetStatus struct {
	Name    string         `json:"name"`
	Policy  string         `json:"policy"`
	Targets []TargetStatus `json:"targets"`
}

// TargetStatus is one target of a [SetStatus].
type TargetStatus struct {
	// URL is the target's identity (scheme://address).
	URL string `json:"url"`
	// Host is the host as written in the config (the name behind a
	// discovered address).
	Host   string `json:"host"`
	Weight int    `json:"weight"`
	// Healthy is true while the target is in rotation.
	Healthy bool `json:"healthy"`
	// State is "up", "unhealthy" (active checks fail), "ejected"
	// (passive ejection) or "unhealthy,ejected".
	State string `json:"state"`
	// Ejections counts passive ejections since the process started.
	Ejections int64 `json:"ejections"`
	// Sessions are open WebSocket sessions; InFlight are HTTP requests
	// and WebSocket handshakes in progress.
	Sessions int64 `json:"sessions"`
	InFlight int64 `json:"in_flight"`
}

// Status returns the set's targets and their state.
func (s *Set) Status() SetStatus {
	ts := s.Targets()
	out := SetStatus{Name: s.Name(), Policy: s.cfg.Policy.String(), Targets: make([]TargetStatus, 0, len(ts))}
	for _, t := range ts {
		out.Targets = append(out.Targets, t.Status())
	}
	return out
}

// Status returns the target's state.
func (t *Target) Status() TargetStatus {
	down := t.st.down.Load()
	state := "up"
	switch {
	case down&downUnhealthy != 0 && down&downEjected != 0:
		state = "unhealthy,ejected"
	case down&downUnhealthy != 0:
		state = "unhealthy"
	case down&downEjected != 0:
		state = "ejected"
	}
	sessions := t.st.sessions.Load()
	return TargetStatus{
		URL: t.URL, Host: t.Host, Weight: t.Weight,
		Healthy:   down == 0,
		State:     state,
		Ejections: t.st.ejectedTotal.Load(),
		Sessions:  sessions,
		InFlight:  max(t.st.active.Load()-sessions, 0),
	}
}
