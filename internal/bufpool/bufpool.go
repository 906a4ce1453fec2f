// Package bufpool holds the 32 KiB buffers that WebSocket legs read into
// and that streamed HTTP bodies are copied through: one pool, so that a
// buffer an idle leg gave back serves the next body and the other way
// round. It imports only the standard library.
package bufpool

import "sync"

// Size is the size of every buffer in the pool.
const Size = 32 << 10

var pool = sync.Pool{New: func() any { b := make([]byte, Size); return &b }}

// Get returns a buffer of Size bytes.
func Get() *[]byte { return pool.Get().(*[]byte) }

// Put gives back a buffer from Get.
func Put(b *[]byte) { pool.Put(b) }
