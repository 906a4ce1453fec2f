package upstream

// Result says how one try of a request on a target went, as far as the
// target is concerned.
type Result uint8

const (
	// ConnectFailed: the connection was refused; nothing was sent.
	ConnectFailed Result = iota + 1
	// Failed: any other failure.
	Failed
)

// Attempt walks one request through the targets of a Set: Next picks a
// target, Failed reports a try that went wrong and says whether to try
// another. It lives on the caller's stack; the zero value is not usable,
// start it with [Set.Begin].
type Attempt struct {
	tab   *table
	first uint32
	n     int // tries handed out
}

// Begin starts an attempt on s.
func (s *Set) Begin(a *Attempt) {
	*a = Attempt{tab: s.tab.Load(), first: s.rr.Add(1) - 1}
}

// Next returns the target for the next try, or nil when none is left.
// Targets are taken round-robin: each attempt starts one further on, and
// a failover moves on to the following target.
func (a *Attempt) Next() *Target {
	all := a.tab.all
	if a.n >= len(all) {
		return nil
	}
	t := all[(int(a.first)+a.n)%len(all)]
	a.n++
	return t
}

// Failed reports that the try on t went wrong and whether the request may
// go to another target: only when nothing was sent and some target is
// left untried.
func (a *Attempt) Failed(t *Target, r Result) (again bool) {
	return r == ConnectFailed && a.n < len(a.tab.all)
}
