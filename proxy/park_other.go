//go:build !linux

package proxy

import "time"

// parkAfter, parking: without epoll, idle legs wait on their goroutine.
const parkAfter = time.Duration(0)

const parking = false

const parkMargin = time.Duration(0)

// poller does not exist here: sessions get none and never park.
type poller struct{}

func pickPoller() *poller { return nil }

func (s *session) park(src, dst *leg) bool { return false }

func (s *session) unpark() {}

func unparkLeg(l *leg) {}
