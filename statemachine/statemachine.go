// Package statemachine defines the contract between the multi-Raft host and
// the replicated service it runs, such as the built-in key-value store.
//
// A state machine is deterministic logic over storage the host owns. Every
// byte of a vShard's state lives in the host's Pebble keyspace under that
// vShard's prefix, written through a Writer that belongs to the same Pebble
// batch as the group's applied index. Two properties follow and are the reason
// for this shape:
//
//   - crash safety: the applied index and the state it covers become durable
//     together or not at all, so no entry is ever applied twice or skipped;
//   - movability: a vShard's state is exactly one key range, so the host can
//     snapshot it, stream it and restore it (for Raft snapshots and for vShard
//     moves between groups) without the state machine's help and without any
//     risk of leaving a piece of state behind.
//
// A state machine therefore keeps no authoritative state in memory. It may
// cache, but a cache must be rebuildable from the Reader at any time.
package statemachine

import "errors"

// ErrNotFound is returned by Reader.Get when the key does not exist.
var ErrNotFound = errors.New("statemachine: key not found")

// Command is one committed command addressed to a vShard, in log order.
type Command struct {
	// Index is the Raft log index of the entry that carried the command.
	// Informational: all replicas apply the same commands at the same indexes.
	Index uint64
	// Timestamp is the proposer's wall clock in Unix nanoseconds, carried in
	// the entry so that every replica sees the same value. It is not a
	// correctness input for ordering; use it for expiry decisions only.
	Timestamp int64
	// Data is the opaque payload that was proposed.
	Data []byte
}

// Reader reads one vShard's state. Keys are relative to the vShard: the host
// adds and strips the vShard's prefix. Slices passed to callbacks are valid
// only for the duration of the callback.
type Reader interface {
	// Get returns a copy of the value stored at key, or ErrNotFound.
	Get(key []byte) ([]byte, error)
	// Scan calls fn for every key in [start, end) in ascending order until fn
	// returns false. A nil end means the end of the vShard.
	Scan(start, end []byte, fn func(key, value []byte) bool) error
}

// Writer reads and writes one vShard's state inside the batch that will also
// record the applied index. Reads observe earlier writes of the same batch.
type Writer interface {
	Reader
	Set(key, value []byte) error
	Delete(key []byte) error
}

// StateMachine is the replicated service run by every replica of a group.
//
// Apply must be deterministic: given the same state and the same commands it
// must produce the same writes and results on every replica. A rejected
// command (a failed compare-and-set, a malformed payload) is a result, not an
// error; Apply returns an error only when storage itself failed, which stops
// the node rather than letting replicas diverge.
type StateMachine interface {
	// Apply applies consecutive committed commands of one vShard. results has
	// the same length as cmds; Apply stores each command's result in it. The
	// results are returned to the proposer and remembered for exactly-once
	// retries (the host keeps the result slices: do not reuse them), so keep
	// them small; results up to 256 bytes are the cheapest to remember. The
	// cmds and results slices themselves are the host's, reused after Apply
	// returns: do not keep them.
	Apply(w Writer, vshard uint32, cmds []Command, results [][]byte) error
	// Read answers a query against one vShard's state. The host calls it only
	// after it has established that the state is fresh enough for the read's
	// consistency level.
	Read(r Reader, vshard uint32, query []byte) ([]byte, error)
}
