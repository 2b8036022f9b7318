// Package kv is the built-in key-value state machine that the nodedb-cluster
// server runs in every data group. It implements statemachine.StateMachine
// and defines the binary encoding of its commands, queries, results and
// responses, which the API layer and the Go client share.
//
// # Data model
//
// Each key holds a value and a version. Versions follow etcd's per-key
// "version" (not its global mod_revision):
//
//   - a put to an absent key creates it at version 1;
//   - a put to an existing key gives it version old+1;
//   - a delete removes the key and its version; a later put starts again at
//     version 1.
//
// Because a delete forgets the version, a version does not identify a value
// across a delete and re-create: a compare-and-set with IfVersion 1 issued
// before the key was deleted and re-created will succeed against the new
// incarnation. Callers that must detect this can store their own generation
// in the value.
//
// Put and Delete take an optional condition, IfVersion:
//
//   - nil: unconditional;
//   - 0: only if the key is absent (create-only put, or a delete that
//     succeeds only if there is nothing to delete);
//   - N > 0: only if the key's current version is N.
//
// A failed condition writes nothing and yields a conflict (an *Error with
// CodeConflict) carrying the key's current version, 0 if absent. Deleting an
// absent key without a condition succeeds and reports that the key did not
// exist.
//
// A Batch applies several puts and deletes in one vShard atomically with
// sequential semantics: every op sees the state left by the ops before it in
// the same batch (so "put k; put k if_version=old+1" succeeds), all
// conditions are checked before anything is written, and if any fails the
// batch writes nothing and the conflict names the failing op's index. Keys of
// one batch must share a vShard; hash tags ("{user1}.a", "{user1}.b") are the
// way to guarantee that.
//
// # Storage layout
//
// The host scopes the Reader and Writer to one vShard and adds the vShard's
// prefix. Inside that keyspace this package owns keys by their first byte:
//
//	'k' + user key  ->  version (uvarint, >= 1) + value bytes
//
// Every other leading byte is reserved for future metadata (for example TTL
// indexes or per-vShard counters), so that data and metadata never collide and
// a scan of user data is one contiguous range ['k', 'l').
//
// # Determinism and limits
//
// Apply runs on every replica and must decide identically everywhere, so it
// cannot consult per-node configuration. It rejects only structurally
// malformed commands and commands beyond fixed hard caps (HardMaxKeySize,
// HardMaxValueSize, HardMaxBatchOps); such a command gets an
// invalid_argument or too_large result, writes nothing, and the following
// commands still apply. The configurable, tighter Limits (4 KiB keys, 1 MiB
// values, 1024 ops by default) are enforced by the encoders, that is where a
// request enters the cluster. Apply returns a Go error only when storage
// itself fails, or when a stored record is corrupt.
//
// # Wire format
//
// All integers are unsigned varints (encoding/binary); bytes(x) is a uvarint
// length followed by x. Every message starts with a format version byte
// (currently 1) and an op or kind code; decoders refuse unknown versions and
// codes, trailing bytes, and any length larger than the bytes that remain, so
// they never allocate more than their input justifies and never panic.
//
//	command  = version op body
//	  put    : op=0x01 cond bytes(key) bytes(value)
//	  delete : op=0x02 cond bytes(key)
//	  batch  : op=0x03 count { (0x01 cond bytes(key) bytes(value) | 0x02 cond bytes(key)) }*count
//	cond     = 0x00 | 0x01 uvarint(if_version)
//
//	result   = version 0x00 count { uvarint(version) uvarint(prev_version) }*count
//	         | version code uvarint(failed_op+1) uvarint(current_version) bytes(message)
//	code     = 0x01 invalid_argument | 0x02 not_found | 0x03 conflict | 0x04 too_large
//
//	query    = version 0x10 bytes(key)                                   ; get
//	         | version 0x11 bytes(prefix) bytes(after) uvarint(limit)     ; scan
//	response = version 0x20 0x00                                         ; get, absent
//	         | version 0x20 0x01 uvarint(version) bytes(value)          ; get, found
//	         | version 0x21 more { bytes(key) uvarint(version) bytes(value) }*  ; scan, to the end
//
// Command and query op codes live in disjoint ranges so that a command passed
// where a query is expected (or the reverse) is refused rather than
// misread.
package kv
